//! JetStream implementation of the bus. Streams are created (or updated) idempotently at connect:
//! ingest is a work queue (a message leaves the stream when the embedder acks it, so "still in the
//! stream" means "queued"), events and dead letters keep messages for a configured age.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::consumer::{NatsConsumer, NatsSettle};
use super::server::Server;
use super::{
    Bus, BusError, Consumer, ConsumerSpec, ConsumerState, Envelope, Held, Published, Request, Start, StreamState,
};
use crate::config::NatsConfig;
use crate::contract::{DEAD_MESSAGE_MAX, StreamKind, Subjects};

/// A connection to NATS with JetStream, bound to one subject prefix.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    timeout: Duration,
}

impl NatsBus {
    /// Connects and makes sure the three streams exist with the configured limits. A user and
    /// password in the URL (`nats://user:password@host:4222`, percent-encoded) authenticate the
    /// connection: the client library itself ignores them.
    pub async fn connect(config: &NatsConfig, subjects: Subjects) -> Result<Self, BusError> {
        let server = Server::parse(config.url.expose(), config.credentials.as_ref())?;
        let client = server
            .options()
            .await?
            .name("memory-layer")
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(server.addrs.as_slice())
            .await
            .map_err(|source| BusError::Connect { url: server.shown(), source })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let bus = Self { client, js, subjects, timeout: config.request_timeout };
        bus.ensure_streams(config).await?;
        Ok(bus)
    }

    async fn ensure_streams(&self, config: &NatsConfig) -> Result<(), BusError> {
        let s = &self.subjects;
        let streams = [
            // Full: new messages are refused (the publisher learns it), never old ones dropped; a
            // tenant's direct subject holds at most its quota, whatever other tenants queue.
            stream::Config {
                name: s.stream(StreamKind::Ingest),
                subjects: vec![s.ingest_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: config.dedup_window,
                max_bytes: config.ingest_max_bytes,
                max_message_size: config.ingest_max_message,
                max_messages_per_subject: config.ingest_max_per_tenant,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
            stream::Config {
                name: s.stream(StreamKind::Events),
                subjects: vec![s.events_all()],
                max_age: config.events_max_age,
                max_bytes: config.events_max_bytes,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: config.dedup_window.min(config.events_max_age),
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
            stream::Config {
                name: s.stream(StreamKind::Dead),
                subjects: vec![s.dead_all()],
                max_age: config.dead_max_age,
                max_bytes: config.dead_max_bytes,
                discard: stream::DiscardPolicy::Old,
                max_message_size: i32::try_from(DEAD_MESSAGE_MAX).unwrap_or(i32::MAX),
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
        ];
        for config in streams {
            self.js.create_or_update_stream(config).await.map_err(|e| BusError::nats("creating a stream", e))?;
        }
        Ok(())
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Drains the connection: flushes what was published, then closes.
    pub async fn close(&self) {
        let _ = self.client.drain().await;
    }
}

/// Longest dead-letter reason kept, in bytes.
const REASON_MAX: usize = 512;

/// A header value from free text (which may quote client input): no control characters (a CR or
/// LF would be rejected by the client), at most [`REASON_MAX`] bytes.
/// The server's reason when a publish was refused because the stream is at a limit
/// (`maximum bytes exceeded`, `maximum messages exceeded`, `maximum messages per subject
/// exceeded`: error 10077 with a stream discarding new messages).
fn full(e: &jetstream::context::PublishError) -> Option<String> {
    let source = std::error::Error::source(e)?.downcast_ref::<jetstream::Error>()?;
    let description = source.to_string();
    (source.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED && description.contains("maximum"))
        .then_some(description)
}

pub(super) fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(REASON_MAX));
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > REASON_MAX {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

pub(super) fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

pub(super) fn header_vec(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .map(|h| {
            h.iter().flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.to_string()))).collect()
        })
        .unwrap_or_default()
}

pub(super) fn envelope(message: async_nats::Message) -> Envelope {
    Envelope {
        subject: message.subject.to_string(),
        headers: header_vec(message.headers.as_ref()),
        payload: message.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: Envelope, id: Option<&str>) -> Result<Published, BusError> {
        let mut publish =
            jetstream::message::PublishMessage::build().payload(message.payload).headers(header_map(&message.headers));
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
        let ack = self
            .js
            .send_publish(message.subject, publish)
            .await
            .map_err(|e| BusError::nats("publishing", e))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::TimedOut => {
                    BusError::Timeout { operation: "publish acknowledgement" }
                }
                _ => match full(&e) {
                    Some(reason) => BusError::Full(reason),
                    None => BusError::nats("publishing", e),
                },
            })?;
        Ok(Published { duplicate: ack.duplicate, sequence: ack.sequence })
    }

    async fn request(&self, message: Envelope, timeout: Duration) -> Result<Bytes, BusError> {
        let subject = message.subject.clone();
        let request = async_nats::Request::new()
            .payload(message.payload)
            .headers(header_map(&message.headers))
            .timeout(Some(timeout));
        let reply = self.client.send_request(subject.clone(), request).await.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => BusError::Timeout { operation: "request" },
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders { subject },
            _ => BusError::nats("sending a request", e),
        })?;
        Ok(reply.payload)
    }

    async fn respond(&self, reply: &str, payload: Bytes) -> Result<(), BusError> {
        self.client.publish(reply.to_owned(), payload).await.map_err(|e| BusError::nats("replying", e))
    }

    async fn broadcast(&self, message: Envelope) -> Result<(), BusError> {
        self.client
            .publish_with_headers(message.subject, header_map(&message.headers), message.payload)
            .await
            .map_err(|e| BusError::nats("broadcasting", e))?;
        self.client.flush().await.map_err(|e| BusError::nats("flushing", e))
    }

    async fn subscribe(&self, subject: String) -> Result<BoxStream<'static, Envelope>, BusError> {
        let subscriber = self.client.subscribe(subject).await.map_err(|e| BusError::nats("subscribing", e))?;
        // The subscription must be registered before the caller publishes what it waits for.
        self.client.flush().await.map_err(|e| BusError::nats("flushing", e))?;
        Ok(subscriber.map(envelope).boxed())
    }

    async fn serve(&self, subject: String, group: String) -> Result<BoxStream<'static, Request>, BusError> {
        let subscriber =
            self.client.queue_subscribe(subject, group).await.map_err(|e| BusError::nats("subscribing", e))?;
        self.client.flush().await.map_err(|e| BusError::nats("flushing", e))?;
        Ok(subscriber
            .map(|m| {
                let reply = m.reply.as_ref().map(ToString::to_string);
                Request { message: envelope(m), reply }
            })
            .boxed())
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, BusError> {
        let stream = self
            .js
            .get_stream(self.subjects.stream(spec.stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                // The worker dead-letters (or, failing that, terminates) a message past its own
                // limit; this backstop stops redelivery even if the worker cannot.
                max_deliver: spec.max_deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::nats("creating a consumer", e))?;
        Ok(Box::new(NatsConsumer {
            consumer,
            settle: NatsSettle { js: self.js.clone(), subjects: self.subjects.clone() },
        }))
    }

    async fn consumer_state(&self, stream: StreamKind, durable: &str) -> Result<ConsumerState, BusError> {
        let info = self
            .js
            .get_stream(self.subjects.stream(stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?
            .consumer_info(durable)
            .await
            .map_err(|e| BusError::nats("reading consumer info", e))?;
        Ok(ConsumerState {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
        })
    }

    async fn last_on_subject(&self, stream: StreamKind, subject: &str) -> Result<Option<Held>, BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.stream(stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(Held {
                message: Envelope {
                    subject: m.subject.to_string(),
                    headers: header_vec(Some(&m.headers)),
                    payload: m.payload,
                },
                sequence: m.sequence,
                published_at: m.time,
            })),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::nats("reading a stream message", e)),
        }
    }

    async fn stream_state(&self, stream: StreamKind) -> Result<StreamState, BusError> {
        let stream = self
            .js
            .get_stream(self.subjects.stream(stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?;
        let state = &stream.cached_info().state;
        Ok(StreamState {
            // An empty stream reports 0 until it has held a message.
            first_sequence: if state.messages == 0 { state.last_sequence + 1 } else { state.first_sequence },
            last_sequence: state.last_sequence,
            last_at: (state.last_sequence > 0).then_some(state.last_timestamp),
        })
    }

    async fn follow(
        &self,
        stream: StreamKind,
        filters: Vec<String>,
        start: Start,
    ) -> Result<BoxStream<'static, Result<Held, BusError>>, BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.stream(stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?;
        let deliver_policy = match start {
            Start::New => jetstream::consumer::DeliverPolicy::New,
            Start::After(sequence) => {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: sequence.saturating_add(1) }
            }
        };
        let (filter_subject, filter_subjects) = match <[String; 1]>::try_from(filters) {
            Ok([one]) => (one, Vec::new()),
            Err(many) => (String::new(), many),
        };
        let messages = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject,
                filter_subjects,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::nats("creating an ordered consumer", e))?
            .messages()
            .await
            .map_err(|e| BusError::nats("following a stream", e))?;
        Ok(messages
            .map(|next| {
                let message = next.map_err(|e| BusError::nats("following a stream", e))?;
                let info =
                    message.info().map_err(|e| BusError::Nats { operation: "reading delivery info", source: e })?;
                let (sequence, published_at) = (info.stream_sequence, info.published);
                Ok(Held { message: envelope(message.split().0), sequence, published_at })
            })
            .boxed())
    }

    async fn purge(&self, stream: StreamKind, subject: &str, through: Option<u64>) -> Result<u64, BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.stream(stream))
            .await
            .map_err(|e| BusError::nats("looking up a stream", e))?;
        let purge = stream.purge().filter(subject);
        let response = match through {
            // The server's sequence is exclusive: everything below it goes.
            Some(last) => purge.sequence(last + 1).await,
            None => purge.await,
        };
        Ok(response.map_err(|e| BusError::nats("purging a stream", e))?.purged)
    }

    async fn ping(&self) -> Result<(), BusError> {
        match tokio::time::timeout(self.timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::nats("pinging NATS", e)),
            Err(_) => Err(BusError::Timeout { operation: "ping" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::DEAD_REASON_HEADER;

    #[test]
    fn reasons_lose_control_characters_and_are_capped() {
        assert_eq!(header_safe("unknown field `a\r\nb`"), "unknown field `a  b`");
        let long = header_safe(&"é".repeat(1000));
        assert!(long.len() <= REASON_MAX + '…'.len_utf8() && long.ends_with('…'));
        // The client accepts the result as a header value.
        let mut map = HeaderMap::new();
        map.insert(DEAD_REASON_HEADER, header_safe("x\u{0}y\n").as_str());
    }
}
