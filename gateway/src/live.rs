//! Live connections (event sockets and streams, search sockets): who may open one, and the
//! bounded feed of a tenant's events each subscriber reads from the events stream.
//!
//! A feed is an ordered consumer on `MEMORY_EVENTS`, filtered by the server to one tenant (and
//! the kinds asked for), pumped into a queue of `MEMORY_LIVE_BUFFER` events. A subscriber that
//! lets the queue fill is a slow consumer: its feed ends with that reason and the last event it
//! was given, and it may resume after that event on a new connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use common::bus::{Bus, Held, Start};
use common::contract::{EventKind, StreamKind, Subjects};
use common::domain::TenantId;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The live connections open on this gateway, per tenant, within their caps.
pub struct Live {
    open: Mutex<Open>,
    max_total: usize,
    max_per_tenant: usize,
    /// Events queued per subscriber.
    pub buffer: usize,
    /// Every open session: the gateway waits for them to close when it stops.
    pub sessions: TaskTracker,
    metrics: Metrics,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_tenant: HashMap<TenantId, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    live: Arc<Live>,
    tenant: TenantId,
}

impl Live {
    pub fn new(max_total: usize, max_per_tenant: usize, buffer: usize, metrics: Metrics) -> Self {
        Self { open: Mutex::default(), max_total, max_per_tenant, buffer, sessions: TaskTracker::new(), metrics }
    }

    /// A place for one more connection of `tenant`: 429 `too_many_live_connections` beyond the
    /// tenant's cap, 503 `overloaded` beyond the gateway's.
    pub fn admit(self: &Arc<Self>, tenant: &TenantId) -> Result<Admitted, ApiError> {
        let mut open = self.open.lock().expect("live connections");
        if open.total >= self.max_total {
            return Err(ApiError::Overloaded);
        }
        let held = open.per_tenant.entry(tenant.clone()).or_default();
        if *held >= self.max_per_tenant {
            return Err(ApiError::TooManyLiveConnections { tenant: tenant.to_string(), limit: self.max_per_tenant });
        }
        *held += 1;
        open.total += 1;
        self.metrics.live_connections.inc();
        Ok(Admitted { live: self.clone(), tenant: tenant.clone() })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.live.open.lock().expect("live connections");
        open.total -= 1;
        if let Some(held) = open.per_tenant.get_mut(&self.tenant) {
            *held -= 1;
            if *held == 0 {
                open.per_tenant.remove(&self.tenant);
            }
        }
        self.live.metrics.live_connections.dec();
    }
}

/// One of a tenant's events, as a subscriber receives it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveEvent {
    /// `message_event`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `stored`, `embedded`, `embedding_failed`, `updated`, `archived`, `restored`, `deleted`
    /// or `erased`.
    pub event: &'static str,
    /// The event's position in the events stream: resume after it with `since` (or
    /// `Last-Event-ID`).
    pub event_id: u64,
    pub tenant_id: TenantId,
    /// When the event was recorded.
    pub at: DateTime<Utc>,
    /// The event as its publisher wrote it (`message_id`, or `message_ids` for a batch, and the
    /// kind's own fields).
    #[schema(value_type = Object)]
    pub data: Value,
}

/// What a feed hands its subscriber.
#[derive(Debug)]
pub enum Feed {
    Event(LiveEvent),
    /// The feed ended; nothing follows.
    End(Ended),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The subscriber let `buffer` events queue up unsent.
    SlowConsumer { buffer: usize },
    /// The events stream could not be read.
    Interrupted,
}

/// Which of a tenant's events to follow, and from where.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub tenant: TenantId,
    /// Empty: every kind.
    pub kinds: Vec<EventKind>,
    /// Events after this id; `None`: from now on.
    pub since: Option<u64>,
}

impl Subscription {
    /// Reads `events` names, comma-separated or listed.
    pub fn kinds<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<EventKind>, ApiError> {
        let mut kinds = Vec::new();
        for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            let kind = EventKind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::Invalid(vec![common::domain::FieldError::new(
                    "events",
                    "invalid",
                    format!("{name:?} is not an event; use {}", known.join(", ")),
                )])
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    /// Starts following: the queue the caller reads, and whether events after `since` may be
    /// gone already (the stream keeps `MEMORY_EVENTS_MAX_AGE_HOURS` of them).
    pub async fn follow(&self, bus: &Arc<dyn Bus>, subjects: &Subjects, live: &Live) -> Result<Following, ApiError> {
        let filters = if self.kinds.is_empty() {
            vec![subjects.tenant_events(&self.tenant, None)]
        } else {
            self.kinds.iter().map(|k| subjects.tenant_events(&self.tenant, Some(*k))).collect()
        };
        let gap = match self.since {
            Some(since) => bus.stream_state(StreamKind::Events).await?.first_sequence > since.saturating_add(1),
            None => false,
        };
        let start = self.since.map_or(Start::New, Start::After);
        let mut events = bus.follow(StreamKind::Events, filters, start).await?;
        // One slot more than the buffer: room for the reason the feed ended.
        let (tx, rx) = mpsc::channel(live.buffer + 1);
        let (buffer, tenant) = (live.buffer, self.tenant.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = events.next() => next,
                };
                let item = match next {
                    Some(Ok(held)) => match event(&tenant, held) {
                        Some(event) => Feed::Event(event),
                        None => continue,
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), tenant = %tenant, "a live feed lost the events stream");
                        Feed::End(Ended::Interrupted)
                    }
                    None => Feed::End(Ended::Interrupted),
                };
                let end = matches!(item, Feed::End(_));
                if !end && tx.capacity() <= 1 {
                    let _ = tx.try_send(Feed::End(Ended::SlowConsumer { buffer }));
                    return;
                }
                if tx.try_send(item).is_err() || end {
                    return;
                }
            }
        });
        Ok(Following { feed: rx, gap })
    }
}

/// A started feed.
pub struct Following {
    pub feed: mpsc::Receiver<Feed>,
    /// Events after the requested `since` may have expired or been erased.
    pub gap: bool,
}

/// The event a stream message holds; `None` (logged) for one that is not an event of ours.
fn event(tenant: &TenantId, held: Held) -> Option<LiveEvent> {
    // `<prefix>.v1.events.<tenant>.<event>.<id>`
    let mut tokens = held.message.subject.rsplit('.');
    let kind = tokens.nth(1).and_then(EventKind::parse);
    let data = serde_json::from_slice::<Value>(&held.message.payload).ok();
    let (Some(kind), Some(data)) = (kind, data) else {
        tracing::warn!(subject = %held.message.subject, sequence = held.sequence, "skipping an unreadable event");
        return None;
    };
    Some(LiveEvent {
        kind: "message_event",
        event: kind.as_str(),
        event_id: held.sequence,
        tenant_id: tenant.clone(),
        at: held.published_at,
        data,
    })
}
