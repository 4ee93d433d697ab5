//! The retention service: applies each tenant's retention policy on a schedule
//! (`MEMORY_RETENTION_SCHEDULE`, hourly by default) and on request (`mem.v1.retention.run`, queue
//! group `retention`). Each tenant's run holds a Postgres advisory lock, so any number of replicas
//! never work on the same tenant at once, and rows change in bounded batches, so a run never holds
//! long locks.

mod events;
mod lifecycle;
mod metrics;
mod runs;
mod tenant;

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use common::bus::{BusError, Request};
use common::config::{Config, ConfigError};
use common::contract::{
    GetMessageRequest, GetMessageResponse, REQUEST_ID_HEADER, RemoteError, RemoteErrorCode, Reply, RetentionRunRequest,
    VERSION,
};
use common::domain::{RetentionAction, TenantId};
use common::store::{Deletes, Edits, Locks, MessageReads, RetentionRuns, Spaces, StoredMessage, TenantLookup};
use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus_client::registry::Registry;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

pub use metrics::Metrics;
pub use runs::Runner;

/// The storage roles the retention service uses: every change to a stored message after ingest.
pub trait Store: Locks + MessageReads + Spaces + RetentionRuns + Edits + Deletes + TenantLookup + 'static {}

impl<T: Locks + MessageReads + Spaces + RetentionRuns + Edits + Deletes + TenantLookup + 'static> Store for T {}

/// The retention service's handles: its view of the store.
pub(crate) type Deps = common::Deps<dyn Store>;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("cannot subscribe to requests")]
    Bus(#[from] BusError),
    /// A setting is unusable (the schedule).
    #[error("retention cannot start with this configuration")]
    Config(#[from] ConfigError),
    #[error("the retention scheduler failed")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),
    #[error("MEMORY_REDIS_URL is not usable")]
    Redis(#[source] redis::RedisError),
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
enum Command {
    Run,
    Archive,
    Restore,
    Update,
    Delete,
    DeleteConversation,
    Erase,
    Export,
    Policy,
}

pub struct Retention {
    runner: Runner,
    lifecycle: lifecycle::Lifecycle,
    requests: BoxStream<'static, (Command, Request)>,
    schedule: String,
}

/// Now, in seconds since the Unix epoch (for the last-run gauge).
fn now_seconds() -> f64 {
    Utc::now().timestamp_millis() as f64 / 1000.0
}

/// Parses a schedule as the scheduler does (six fields, seconds first).
fn parse_schedule(schedule: &str) -> Result<croner::Cron, RetentionError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .map_err(|e| {
            ConfigError::one(format!(
                "MEMORY_RETENTION_SCHEDULE={schedule:?}: not a cron expression with seconds, like \"0 0 * * * *\" ({e})"
            ))
            .into()
        })
}

/// The longest gap between the schedule's next ten runs: how long a healthy deployment may go
/// without one.
fn schedule_interval(cron: &croner::Cron) -> Duration {
    let mut longest = Duration::ZERO;
    let mut at = Utc::now();
    for _ in 0..10 {
        let Ok(next) = cron.find_next_occurrence(&at, false) else { break };
        longest = longest.max((next - at).to_std().unwrap_or_default());
        at = next;
    }
    longest
}

impl Retention {
    /// Checks the schedule and joins the `retention` queue group; the schedule starts with `run`.
    pub async fn build(
        config: &Config,
        deps: common::Deps<impl Store>,
        registry: &mut Registry,
    ) -> Result<Self, RetentionError> {
        let deps: Deps = deps.view(|s| s as std::sync::Arc<dyn Store>);
        let cron = parse_schedule(&config.retention.schedule)?;
        let group = deps.subjects.retention_group().to_owned();
        let s = &deps.subjects;
        let mut streams = Vec::new();
        for (command, subject) in [
            (Command::Run, s.retention_run()),
            (Command::Archive, s.archive_message()),
            (Command::Restore, s.restore_message()),
            (Command::Update, s.update_messages()),
            (Command::Delete, s.delete_messages()),
            (Command::DeleteConversation, s.delete_conversation()),
            (Command::Erase, s.erase_tenant()),
            (Command::Export, s.export_tenant()),
            (Command::Policy, s.retention_policy()),
        ] {
            streams.push(deps.bus.serve(subject, group.clone()).await?.map(move |r| (command, r)).boxed());
        }
        let requests = futures::stream::select_all(streams).boxed();
        let redis = match &config.redis_url {
            Some(url) => Some(redis::Client::open(url.expose()).map_err(RetentionError::Redis)?),
            None => None,
        };
        let metrics = Metrics::register(registry);
        metrics.schedule_interval.set(schedule_interval(&cron).as_secs_f64());
        // A fresh process counts as having run: the alert waits two periods from its start.
        metrics.last_run.set(now_seconds());
        let lifecycle = lifecycle::Lifecycle {
            deps: deps.clone(),
            weights: config.embedder.importance,
            batch_size: config.retention.batch_size,
            redis,
            metrics: metrics.clone(),
            policy: config.retention.policy,
        };
        Ok(Self {
            lifecycle,
            runner: Runner { deps, policy: config.retention.policy, batch_size: config.retention.batch_size, metrics },
            requests,
            schedule: config.retention.schedule.clone(),
        })
    }

    pub fn runner(&self) -> Runner {
        self.runner.clone()
    }

    /// Serves requests and scheduled runs until `shutdown`; finishes what is in hand within `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), RetentionError> {
        let mut scheduler = JobScheduler::new().await?;
        let runner = self.runner.clone();
        let job = Job::new_async(self.schedule.as_str(), move |_, _| {
            let runner = runner.clone();
            Box::pin(async move {
                let all = RetentionRunRequest {
                    v: VERSION,
                    tenant_id: None,
                    all_tenants: true,
                    actions: vec![RetentionAction::Archive, RetentionAction::Delete],
                    dry_run: false,
                };
                match runner.run(&all).await {
                    Ok(_) => {
                        runner.metrics.last_run.set(now_seconds());
                    }
                    Err(e) => {
                        warn!(error = %e, cause = ?std::error::Error::source(&e), "a scheduled retention run failed")
                    }
                }
            })
        })?;
        scheduler.add(job).await?;
        scheduler.start().await?;

        let (runner, lifecycle) = (self.runner, self.lifecycle);
        common::shutdown::serve(self.requests, &shutdown, grace, "retention requests", |tasks, (command, request)| {
            let (runner, lifecycle) = (runner.clone(), lifecycle.clone());
            let request_id = request.message.header(REQUEST_ID_HEADER).unwrap_or("-");
            let span = tracing::info_span!("command", ?command, request_id = %request_id);
            tasks.spawn(
                async move {
                    let l = &lifecycle;
                    match command {
                        Command::Run => answer(&runner, request).await,
                        Command::Archive => archive_or_restore(&runner, request, true).await,
                        Command::Restore => archive_or_restore(&runner, request, false).await,
                        Command::Update => serve(l, request, "update", |r| l.update(r)).await,
                        Command::Delete => serve(l, request, "delete", |r| l.delete(r)).await,
                        Command::DeleteConversation => {
                            serve(l, request, "delete_conversation", |r| l.delete_conversation(r)).await;
                        }
                        Command::Erase => serve(l, request, "erase", |r| l.erase(r)).await,
                        Command::Export => serve(l, request, "export", |r| l.export(r)).await,
                        Command::Policy => serve(l, request, "policy", |r| l.policy(r)).await,
                    }
                    tracing::debug!("command answered");
                }
                .instrument(span),
            );
        })
        .await;
        let _ = scheduler.shutdown().await;
        Ok(())
    }
}

/// Parses a request, runs `handle` and answers with its result or a typed error.
async fn serve<Q, A, F, Fut>(lifecycle: &lifecycle::Lifecycle, request: Request, command: &'static str, handle: F)
where
    Q: serde::de::DeserializeOwned,
    A: serde::Serialize,
    F: FnOnce(Q) -> Fut,
    Fut: Future<Output = Result<A, RemoteError>>,
{
    let Some(reply) = request.reply.clone() else { return };
    let outcome = match serde_json::from_slice::<Q>(&request.message.payload) {
        Err(e) => Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, format!("malformed request: {e}"))),
        Ok(q) => match handle(q).await {
            Ok(a) => Reply::Ok(a),
            Err(e) => Reply::Error(e),
        },
    };
    let outcome_label = match &outcome {
        Reply::Ok(_) => "ok".to_owned(),
        Reply::Error(e) => e.code.to_string(),
    };
    lifecycle.metrics.commands.get_or_create(&metrics::CommandLabels { command, outcome: outcome_label }).inc();
    let payload = Bytes::from(serde_json::to_vec(&outcome).expect("replies serialise"));
    if let Err(e) = lifecycle.deps.bus.respond(&reply, payload).await {
        warn!(error = %e, "answering a request failed");
    }
}

/// Whether the tenant exists or has messages (an unreachable store counts as yes: the run then
/// reports the store's failure).
async fn known(runner: &Runner, tenant: Option<&TenantId>) -> bool {
    match tenant {
        Some(t) => runner.deps.store.tenant_known(t).await.unwrap_or(true),
        None => true,
    }
}

async fn answer(runner: &Runner, request: Request) {
    let Some(reply) = request.reply.clone() else { return };
    let bad = |m: String| Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, m));
    let outcome = match serde_json::from_slice::<RetentionRunRequest>(&request.message.payload) {
        Err(e) => bad(format!("malformed retention request: {e}")),
        Ok(r) if r.v != VERSION => bad(format!("unsupported version {}", r.v)),
        Ok(r) if r.actions.is_empty() => bad("give at least one action: archive, delete".into()),
        Ok(r) if r.tenant_id.is_none() && !r.all_tenants => {
            bad("name a tenant_id, or set all_tenants to run for every tenant".into())
        }
        Ok(r) if r.tenant_id.is_some() && !known(runner, r.tenant_id.as_ref()).await => Reply::Error(RemoteError::new(
            RemoteErrorCode::NotFound,
            format!("no tenant {}", r.tenant_id.as_ref().map_or("", TenantId::as_str)),
        )),
        Ok(r) => match runner.run(&r).await {
            Ok(report) => Reply::Ok(report),
            Err(e) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), "a retention run failed");
                Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, format!("retention failed: {e}")))
            }
        },
    };
    let payload = Bytes::from(serde_json::to_vec(&outcome).expect("replies serialise"));
    if let Err(e) = runner.deps.bus.respond(&reply, payload).await {
        warn!(error = %e, "answering a retention request failed");
    }
}

/// Archives or restores one of the tenant's messages.
async fn archive_or_restore(runner: &Runner, request: Request, archive: bool) {
    let Some(reply) = request.reply.clone() else { return };
    let outcome = match serde_json::from_slice::<GetMessageRequest>(&request.message.payload) {
        Err(e) => Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, format!("malformed request: {e}"))),
        Ok(r) => {
            let now = Utc::now();
            match runner.deps.store.set_archived(&r.tenant_id, r.message_id, archive, now).await {
                Ok(message) => {
                    if let Some(m) = &message {
                        let ids = [m.message_id];
                        if archive {
                            events::archived(&runner.deps, &m.tenant_id, &ids, now).await;
                        } else {
                            events::restored(&runner.deps, &m.tenant_id, &ids).await;
                        }
                    }
                    Reply::Ok(GetMessageResponse { message: message.map(StoredMessage::view) })
                }
                Err(e) => Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, format!("{e}"))),
            }
        }
    };
    let payload = Bytes::from(serde_json::to_vec(&outcome).expect("replies serialise"));
    if let Err(e) = runner.deps.bus.respond(&reply, payload).await {
        warn!(error = %e, "answering an archive or restore request failed");
    }
}
