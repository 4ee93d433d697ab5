//! The retention service: applies each tenant's retention policy on a schedule
//! (`MEMORY_RETENTION_SCHEDULE`, hourly by default) and on request (`mem.v1.retention.run`, queue
//! group `retention`). Each tenant's run holds a Postgres advisory lock, so any number of replicas
//! never work on the same tenant at once, and rows change in bounded batches, so a run never holds
//! long locks.

mod events;
mod lifecycle;
mod metrics;
mod operations;
mod runs;
mod tenant;

use std::time::Duration;

use chrono::Utc;
use common::bus::respond::{Answered, Responder, bad_request, unavailable};
use common::bus::{BusError, Request};
use common::config::{Config, ConfigError};
use common::contract::{
    DeleteConversationRequest, EraseTenantRequest, GetMessageRequest, GetMessageResponse, RemoteError,
    RetentionRunRequest, RetentionRunResponse, VERSION,
};
use common::domain::RetentionAction;
use common::store::{Deletes, Edits, Locks, MessageReads, Operations, RetentionRuns, Spaces, StoredMessage};
use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus_client::registry::Registry;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use metrics::Metrics;
pub use runs::Runner;

/// The storage roles the retention service uses: every change to a stored message after ingest.
pub trait Store: Locks + MessageReads + Spaces + RetentionRuns + Edits + Deletes + Operations + 'static {}

impl<T: Locks + MessageReads + Spaces + RetentionRuns + Edits + Deletes + Operations + 'static> Store for T {}

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
    responder: Responder,
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
            responder: Responder::new(deps.bus.clone(), config.nats.max_in_flight),
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
                    operation_id: None,
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

        let (runner, lifecycle, responder) = (self.runner, self.lifecycle, self.responder);
        common::shutdown::serve(self.requests, &shutdown, grace, "retention requests", |tasks, (command, request)| {
            let (runner, l) = (runner.clone(), lifecycle.clone());
            let metrics = lifecycle.metrics.clone();
            let answered = move |a: Answered| {
                let outcome = a.error.map_or_else(|| "ok".to_owned(), |code| code.to_string());
                tracing::debug!(%outcome, took = ?a.took, "command answered");
                metrics.commands.get_or_create(&metrics::CommandLabels { command: a.endpoint, outcome }).inc();
            };
            let r = &responder;
            match command {
                Command::Run => r.spawn(
                    tasks,
                    "run",
                    request,
                    move |q: RetentionRunRequest, _| async move {
                        let store = runner.deps.store.clone();
                        operations::tracked(&*store, q.operation_id, run(&runner, q)).await
                    },
                    answered,
                ),
                Command::Archive => r.spawn(
                    tasks,
                    "archive",
                    request,
                    move |q, _| async move { set_archived(&runner, q, true).await },
                    answered,
                ),
                Command::Restore => r.spawn(
                    tasks,
                    "restore",
                    request,
                    move |q, _| async move { set_archived(&runner, q, false).await },
                    answered,
                ),
                Command::Update => {
                    r.spawn(tasks, "update", request, move |q, _| async move { l.update(q).await }, answered)
                }
                Command::Delete => {
                    r.spawn(tasks, "delete", request, move |q, _| async move { l.delete(q).await }, answered)
                }
                Command::DeleteConversation => r.spawn(
                    tasks,
                    "delete_conversation",
                    request,
                    move |q: DeleteConversationRequest, _| async move {
                        let store = l.deps.store.clone();
                        operations::tracked(&*store, q.operation_id, l.delete_conversation(q)).await
                    },
                    answered,
                ),
                Command::Erase => r.spawn(
                    tasks,
                    "erase",
                    request,
                    move |q: EraseTenantRequest, _| async move {
                        let store = l.deps.store.clone();
                        operations::tracked(&*store, q.operation_id, l.erase(q)).await
                    },
                    answered,
                ),
                Command::Export => {
                    r.spawn(tasks, "export", request, move |q, _| async move { l.export(q).await }, answered)
                }
                Command::Policy => {
                    r.spawn(tasks, "policy", request, move |q, _| async move { l.policy(q).await }, answered)
                }
            }
        })
        .await;
        let _ = scheduler.shutdown().await;
        Ok(())
    }
}

/// A retention run on request. A tenant with nothing stored (or none at all) gets zeros, as
/// from the original service: a client may run retention right after a tenant's first message.
async fn run(runner: &Runner, r: RetentionRunRequest) -> Result<RetentionRunResponse, RemoteError> {
    if r.actions.is_empty() {
        return Err(bad_request("give at least one action: archive, delete"));
    }
    if r.tenant_id.is_none() && !r.all_tenants {
        return Err(bad_request("name a tenant_id, or set all_tenants to run for every tenant"));
    }
    runner.run(&r).await.map_err(|e| unavailable("the retention run", &e))
}

/// Archives or restores one of the tenant's messages.
async fn set_archived(runner: &Runner, r: GetMessageRequest, archive: bool) -> Result<GetMessageResponse, RemoteError> {
    let now = Utc::now();
    let message = runner
        .deps
        .store
        .set_archived(&r.tenant_id, r.message_id, archive, now)
        .await
        .map_err(|e| unavailable(if archive { "archiving the message" } else { "restoring the message" }, &e))?;
    if let Some(m) = &message {
        let ids = [m.message_id];
        if archive {
            events::archived(&runner.deps, &m.tenant_id, &ids, now).await;
        } else {
            events::restored(&runner.deps, &m.tenant_id, &ids).await;
        }
    }
    Ok(GetMessageResponse { message: message.map(StoredMessage::view) })
}
