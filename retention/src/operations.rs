//! Long work the gateway made an operation of (deletes of conversations and tenants, retention
//! runs): a heartbeat while it runs, so a client can tell it is alive, and its outcome at the end,
//! so a client that stopped waiting can read it.

use common::contract::RemoteError;
use common::store::{OPERATION_HEARTBEAT, Operations};
use serde::Serialize;
use tracing::warn;
use uuid::Uuid;

/// Runs `work`; with an operation, heartbeats it meanwhile and records the outcome. Recording
/// failures are logged: the work's own answer still goes to whoever waits.
pub(crate) async fn tracked<T: Serialize>(
    store: &dyn Operations,
    operation: Option<Uuid>,
    work: impl Future<Output = Result<T, RemoteError>>,
) -> Result<T, RemoteError> {
    let Some(id) = operation else {
        return work.await;
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(OPERATION_HEARTBEAT).await;
            if let Err(e) = store.touch_operation(id).await {
                warn!(operation = %id, error = %e, "marking an operation alive failed");
            }
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = heartbeat => unreachable!("the heartbeat never ends"),
    };
    let recorded = match &outcome {
        Ok(answer) => serde_json::to_value(answer).map_err(|e| e.to_string()),
        Err(e) => Err(e.message.clone()),
    };
    if let Err(e) = store.finish_operation(id, recorded).await {
        warn!(operation = %id, error = %e, "recording an operation's outcome failed; it will show as interrupted");
    }
    outcome
}
