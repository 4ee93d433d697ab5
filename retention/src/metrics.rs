//! The retention service's metrics, registered under `memory_retention_*`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
        let m = Self {
            commands: Family::default(),
            delete_lock: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            runs: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            archived: Counter::default(),
            deleted: Counter::default(),
            busy: Counter::default(),
            last_run: Gauge::default(),
            schedule_interval: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("retention");
        r.register("runs", "Tenant retention runs done", m.runs.clone());
        r.register_with_unit("run_duration", "Time of one tenant's retention run", Unit::Seconds, m.duration.clone());
        r.register("archived_messages", "Messages archived by retention", m.archived.clone());
        r.register("deleted_messages", "Messages deleted by retention", m.deleted.clone());
        r.register("busy", "Tenant runs skipped: another run held the tenant", m.busy.clone());
        r.register_with_unit(
            "last_run_timestamp",
            "When this process last finished a scheduled run (its start until then)",
            Unit::Seconds,
            m.last_run.clone(),
        );
        r.register_with_unit(
            "schedule_interval",
            "Longest gap between scheduled runs",
            Unit::Seconds,
            m.schedule_interval.clone(),
        );
        r.register("commands", "Lifecycle commands answered, by outcome", m.commands.clone());
        r.register_with_unit(
            "delete_lock",
            "Time to take a tenant's write lock and write a tombstone",
            Unit::Seconds,
            m.delete_lock.clone(),
        );
        m
    }

    pub(crate) fn record(&self, archived: u64, deleted: u64, took: Duration) {
        self.runs.inc();
        self.duration.observe(took.as_secs_f64());
        self.archived.inc_by(archived);
        self.deleted.inc_by(deleted);
    }
}
