//! One cancellation token per process, cancelled on SIGTERM or SIGINT and passed down explicitly.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            () = term => {},
        }
        tracing::info!("shutdown signal received; draining in-flight work");
        cancel.cancel();
    });
    token
}

/// Serves a stream of requests until `shutdown`: `handle` starts each one (as a task on the
/// tracker, typically). At shutdown it also starts what has already arrived, then drops the
/// stream (unsubscribing, so new requests go to other replicas) and waits up to `grace` for the
/// tasks in hand.
pub async fn serve<T>(
    mut requests: futures::stream::BoxStream<'static, T>,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
    what: &'static str,
    mut handle: impl FnMut(&tokio_util::task::TaskTracker, T),
) {
    use futures::{FutureExt as _, StreamExt as _};
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            next = requests.next() => next,
        };
        match next {
            Some(request) => handle(&tasks, request),
            None => break,
        }
    }
    while let Some(Some(request)) = requests.next().now_or_never() {
        handle(&tasks, request);
    }
    drop(requests);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(in_flight = tasks.len(), "{what} still running at the end of the grace period");
    }
}
