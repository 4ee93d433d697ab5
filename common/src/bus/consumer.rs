//! The pull consumer on NATS, and settling what it delivers: ack, retry with a delay, or
//! dead-letter with the reason.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use async_trait::async_trait;
use futures::StreamExt;

use super::nats::{envelope, header_safe};
use super::{BusError, Consumer, Delivery, Disposition, Envelope, Settle};
use crate::contract::{
    DEAD_CODE_HEADER, DEAD_PAYLOAD_MAX, DEAD_REASON_HEADER, DEAD_SEQUENCE_HEADER, DEAD_SUBJECT_HEADER,
    DEAD_TRUNCATED_HEADER, REQUEST_ID_HEADER, Subjects,
};

pub(super) struct NatsConsumer {
    pub(super) consumer: jetstream::consumer::Consumer<pull::Config>,
    pub(super) settle: NatsSettle,
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| BusError::nats("pulling messages", e))?;
        let mut out = Vec::with_capacity(max);
        while let Some(next) = batch.next().await {
            let message = next.map_err(|source| BusError::Nats { operation: "pulling messages", source })?;
            let info = message.info().map_err(|e| BusError::Nats { operation: "reading delivery info", source: e })?;
            let (delivered, stream_sequence, published_at) =
                (info.delivered.unsigned_abs(), info.stream_sequence, info.published);
            let (message, acker) = message.split();
            out.push(Delivery {
                message: envelope(message),
                delivered,
                stream_sequence,
                published_at,
                settle: std::sync::Arc::new(NatsAck { acker, inner: self.settle.clone() }),
            });
        }
        Ok(out)
    }
}

#[derive(Clone)]
pub(super) struct NatsSettle {
    pub(super) js: jetstream::Context,
    pub(super) subjects: Subjects,
}

pub(super) struct NatsAck {
    pub(super) acker: jetstream::message::Acker,
    pub(super) inner: NatsSettle,
}

#[async_trait]
impl Settle for NatsAck {
    async fn in_progress(&self) -> Result<(), BusError> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| BusError::Nats { operation: "extending the ack wait", source: e })
    }

    async fn settle(&self, message: &Envelope, sequence: u64, disposition: Disposition) -> Result<(), BusError> {
        match disposition {
            // A double ack waits for the server to confirm, so a lost ack cannot go unnoticed.
            Disposition::Ack => {
                self.acker.double_ack().await.map_err(|e| BusError::Nats { operation: "acking", source: e })
            }
            Disposition::Retry(delay) => self
                .acker
                .ack_with(AckKind::Nak(delay))
                .await
                .map_err(|e| BusError::Nats { operation: "naking", source: e }),
            Disposition::Terminate => self
                .acker
                .ack_with(AckKind::Term)
                .await
                .map_err(|e| BusError::Nats { operation: "terminating", source: e }),
            Disposition::Reject(rejection) => {
                // Only our own headers: a publisher's (`Nats-Expected-Stream`, say) could make the
                // dead-letter stream refuse the copy.
                let mut headers = async_nats::HeaderMap::new();
                if let Some(id) = message.header(REQUEST_ID_HEADER) {
                    headers.insert(REQUEST_ID_HEADER, header_safe(id).as_str());
                }
                headers.insert(DEAD_REASON_HEADER, header_safe(&rejection.reason).as_str());
                headers.insert(DEAD_CODE_HEADER, rejection.code);
                headers.insert(DEAD_SUBJECT_HEADER, header_safe(&message.subject).as_str());
                headers.insert(DEAD_SEQUENCE_HEADER, sequence.to_string().as_str());
                // The payload as sent, cut to what the dead-letter stream takes (and marked so);
                // an id derived from the source sequence makes a repeated dead-lettering (after a
                // lost ack) a duplicate.
                let mut payload = message.payload.clone();
                if payload.len() > DEAD_PAYLOAD_MAX {
                    headers.insert(DEAD_TRUNCATED_HEADER, payload.len().to_string().as_str());
                    payload.truncate(DEAD_PAYLOAD_MAX);
                }
                let publish = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers)
                    .message_id(format!("dead-{sequence}"));
                self.inner
                    .js
                    .send_publish(self.inner.subjects.dead_for(&message.subject), publish)
                    .await
                    .map_err(|e| BusError::nats("dead-lettering", e))?
                    .await
                    .map_err(|e| BusError::nats("dead-lettering", e))?;
                self.acker.double_ack().await.map_err(|e| BusError::Nats { operation: "acking", source: e })
            }
        }
    }
}
