//! The bus: durable streams (ingest, events, dead letters), request/reply services and plain
//! subscriptions, behind one trait so workers never see the transport. `NatsBus` is the JetStream
//! implementation.

mod consumer;
mod nats;
pub mod respond;
mod server;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::contract::StreamKind;

pub use nats::NatsBus;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The text is not shown: it may hold a password.
    #[error("MEMORY_NATS_URL: server {server} of the list is not a NATS URL: {reason}")]
    BadUrl { server: usize, reason: String },
    /// The text never holds a secret.
    #[error("NATS credentials: {0}")]
    Credentials(String),
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("{operation} timed out")]
    Timeout { operation: &'static str },
    #[error("no service answers on {subject}")]
    NoResponders { subject: String },
    #[error("{operation} failed")]
    Nats {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the message is larger than the server accepts")]
    TooLarge,
    /// The stream holds as much as it may (its byte or message limit, or the subject's): it takes
    /// nothing new until its consumers catch up.
    #[error("the stream is full: {0}")]
    Full(String),
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// Whether the server could not be reached, so trying again may succeed.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { source, .. }
            if matches!(source.kind(), async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut | async_nats::ConnectErrorKind::Dns))
    }

    pub(crate) fn nats(operation: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Nats { operation, source: Box::new(source) }
    }
}

/// What becomes of a delivered message once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done, or already done: remove it from the stream.
    Ack,
    /// Transient failure: redeliver, after this delay if given.
    Retry(Option<Duration>),
    /// Never valid: publish it to the dead-letter stream with the reason, then ack it.
    Reject(Rejection),
    /// Stop delivering it, unsaved (`AckTerm`): for an event that cannot even be dead-lettered.
    Terminate,
}

/// Why a message was dead-lettered: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub reason: String,
}

/// A message on the bus: subject, headers and raw payload.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Envelope {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { subject: subject.into(), headers: Vec::new(), payload: payload.into() }
    }
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How a durable publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stream already held a message with this id (within its duplicate window).
    pub duplicate: bool,
    pub sequence: u64,
}

/// A message delivered by a durable consumer, to be settled exactly once.
pub struct Delivery {
    pub message: Envelope,
    /// 1 on first delivery.
    pub delivered: u64,
    pub stream_sequence: u64,
    /// When the stream stored it.
    pub published_at: DateTime<Utc>,
    pub(crate) settle: std::sync::Arc<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject)
            .field("delivered", &self.delivered)
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Applies the disposition: ack, redeliver later, or dead-letter then ack.
    pub async fn settle(&self, disposition: Disposition) -> Result<(), BusError> {
        self.settle.settle(&self.message, self.stream_sequence, disposition).await
    }

    /// A handle that tells the server the message is still being worked on, so its ack wait
    /// starts over and it is not redelivered meanwhile.
    pub fn keepalive(&self) -> KeepAlive {
        KeepAlive { settle: self.settle.clone() }
    }
}

pub struct KeepAlive {
    settle: std::sync::Arc<dyn Settle>,
}

impl KeepAlive {
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.settle.in_progress().await
    }
}

#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn settle(&self, message: &Envelope, sequence: u64, disposition: Disposition) -> Result<(), BusError>;
    async fn in_progress(&self) -> Result<(), BusError>;
}

/// A request received by a service; answer with [`Bus::respond`].
#[derive(Debug)]
pub struct Request {
    pub message: Envelope,
    pub reply: Option<String>,
}

/// What a durable consumer still has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Redelivered, not yet acknowledged.
    pub redelivered: u64,
}

/// A message a stream holds, and where it sits.
#[derive(Debug, Clone)]
pub struct Held {
    pub message: Envelope,
    pub sequence: u64,
    /// When the stream stored it, by the server's clock.
    pub published_at: DateTime<Utc>,
}

/// Where [`Bus::follow`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next message stored.
    New,
    /// With the first message held after this sequence (the oldest held, if it is gone).
    After(u64),
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The oldest sequence still held (the next one to be stored, when empty).
    pub first_sequence: u64,
    /// The last sequence stored, 0 if none ever was.
    pub last_sequence: u64,
    /// When the stream stored its last message (by the server's clock), if it stored any.
    pub last_at: Option<DateTime<Utc>>,
}

/// Settings of a durable pull consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: StreamKind,
    pub durable: String,
    pub filter: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    /// The server's own delivery limit: a backstop behind the worker's, so that no message is
    /// delivered forever whatever happens to the worker.
    pub max_deliver: i64,
}

/// A durable pull consumer.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Waits up to `wait` for up to `max` messages; returns what arrived (possibly none).
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to a stream and returns once the stream stored it. `id` deduplicates within
    /// the stream's window.
    async fn publish(&self, message: Envelope, id: Option<&str>) -> Result<Published, BusError>;

    /// Sends a request and waits up to `timeout` for the reply's payload.
    async fn request(&self, message: Envelope, timeout: Duration) -> Result<Bytes, BusError>;

    /// Answers a request.
    async fn respond(&self, reply: &str, payload: Bytes) -> Result<(), BusError>;

    /// Publishes to every current subscriber, without a stream (at most once).
    async fn broadcast(&self, message: Envelope) -> Result<(), BusError>;

    /// Every message published on `subject` (wildcards allowed) from now on, until dropped.
    async fn subscribe(&self, subject: String) -> Result<BoxStream<'static, Envelope>, BusError>;

    /// Requests on `subject`, shared among every member of `group`.
    async fn serve(&self, subject: String, group: String) -> Result<BoxStream<'static, Request>, BusError>;

    /// Creates (or updates) a durable consumer and returns a handle to pull from it.
    async fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, BusError>;

    /// The backlog of a durable consumer.
    async fn consumer_state(&self, stream: StreamKind, durable: &str) -> Result<ConsumerState, BusError>;

    /// The last message still held by a stream on a subject (wildcards allowed), if any.
    async fn last_on_subject(&self, stream: StreamKind, subject: &str) -> Result<Option<Held>, BusError>;

    /// Where a stream stands: first and last sequence, time of the last message.
    async fn stream_state(&self, stream: StreamKind) -> Result<StreamState, BusError>;

    /// Every message a stream holds on the subjects `filters` (wildcards allowed) from `start` on,
    /// in stream order, then each new one as it is stored, until the stream is dropped. Nothing is
    /// acknowledged: this is an ordered, ephemeral consumer the server forgets soon after.
    async fn follow(
        &self,
        stream: StreamKind,
        filters: Vec<String>,
        start: Start,
    ) -> Result<BoxStream<'static, Result<Held, BusError>>, BusError>;

    /// Removes a stream's messages on `subject` (wildcards allowed), only those up to sequence
    /// `through` when given; how many it removed.
    async fn purge(&self, stream: StreamKind, subject: &str, through: Option<u64>) -> Result<u64, BusError>;

    /// Succeeds when the server answers.
    async fn ping(&self) -> Result<(), BusError>;
}
