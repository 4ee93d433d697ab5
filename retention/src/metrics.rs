//! The retention service's metrics, registered under `memory_retention_*`.

use std::time::Duration;

use common::metrics::{registered, seconds};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    /// `ok`, `bad_request`, `not_found`, `unavailable`…
    pub outcome: String,
}

#[derive(Clone)]
pub struct Metrics {
    /// Lifecycle commands answered (update, delete, conversation delete, erase, export), by
    /// outcome: `memory_retention_commands_total`.
    pub commands: Family<CommandLabels, Counter>,
    /// Time to take a tenant's write lock and write a tombstone: it waits for that tenant's
    /// ingest inserts in flight (`memory_retention_delete_lock_seconds`).
    pub delete_lock: Histogram,
    /// Tenant runs done: `memory_retention_runs_total`.
    pub runs: Counter,
    /// Time of one tenant's run: `memory_retention_run_duration_seconds`.
    pub duration: Histogram,
    /// Messages archived: `memory_retention_archived_messages_total` (no tenant label: the
    /// number of tenants is unbounded).
    pub archived: Counter,
    /// Messages deleted, by runs and commands: `memory_retention_deleted_messages_total`.
    pub deleted: Counter,
    /// Tenant runs skipped because another run held the tenant: `memory_retention_busy_total`.
    pub busy: Counter,
    /// When this process last finished a scheduled run, in seconds since the Unix epoch (its
    /// start until then): `memory_retention_last_run_timestamp_seconds`.
    pub last_run: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The longest gap between scheduled runs: `memory_retention_schedule_interval_seconds`.
    pub schedule_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("retention");
        Self {
            commands: registered(r, "commands", "Lifecycle commands answered, by outcome", Family::default()),
            delete_lock: seconds(
                r,
                "delete_lock",
                "Time to take a tenant's write lock and write a tombstone",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            runs: registered(r, "runs", "Tenant retention runs done", Counter::default()),
            duration: seconds(
                r,
                "run_duration",
                "Time of one tenant's retention run",
                Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            ),
            archived: registered(r, "archived_messages", "Messages archived by retention", Counter::default()),
            deleted: registered(r, "deleted_messages", "Messages deleted by retention", Counter::default()),
            busy: registered(r, "busy", "Tenant runs skipped: another run held the tenant", Counter::default()),
            last_run: seconds(
                r,
                "last_run_timestamp",
                "When this process last finished a scheduled run (its start until then)",
                Gauge::default(),
            ),
            schedule_interval: seconds(r, "schedule_interval", "Longest gap between scheduled runs", Gauge::default()),
        }
    }

    pub(crate) fn record(&self, archived: u64, deleted: u64, took: Duration) {
        self.runs.inc();
        self.duration.observe(took.as_secs_f64());
        self.archived.inc_by(archived);
        self.deleted.inc_by(deleted);
    }
}
