//! Reading an ingest event: the gateway's own validation rules, applied again, because anyone
//! may publish to the ingest subjects directly.

use common::bus::{Delivery, Rejection};
use common::contract::{MessageReceived, StreamKind, Subjects, VERSION};
use common::domain::{MessageId, NewMessage};

/// A delivery that passed validation.
pub(super) struct Accepted {
    pub(super) delivery: Delivery,
    pub(super) message: NewMessage,
    /// The importance it had when exported (an import), if given.
    pub(super) importance: Option<f64>,
}

/// Reads and validates one ingest event with the gateway's own rules.
pub(super) fn parse(subjects: &Subjects, delivery: &Delivery) -> Result<(NewMessage, Option<f64>), Rejection> {
    let m = &delivery.message;
    let reject = |code: &'static str, reason: String| Rejection { code, reason };
    let (tenant_token, id_token) = subjects
        .parse_ingest(&m.subject)
        .ok_or_else(|| reject("bad_subject", format!("`{}` is not <prefix>.v1.ingest.<tenant>[.<id>]", m.subject)))?;
    let event: MessageReceived = serde_json::from_slice(&m.payload)
        .map_err(|e| reject("malformed_json", format!("payload is not a valid MessageReceived: {e}")))?;
    if event.v != VERSION {
        return Err(reject(
            "unsupported_version",
            format!("payload version {} is not supported (expected {VERSION})", event.v),
        ));
    }
    if let Some(i) = event.importance
        && !(0.0..=1.0).contains(&i)
    {
        return Err(reject("invalid_message", format!("importance must be between 0 and 1, got {i}")));
    }
    let mut input = event.message;
    if let Some(token) = id_token {
        let subject_id = MessageId::parse(token)
            .map_err(|_| reject("bad_subject", format!("`{token}` in the subject is not a UUID")))?;
        match input.message_id.as_deref().map(MessageId::parse) {
            Some(Ok(payload_id)) if payload_id != subject_id => {
                return Err(reject("id_mismatch", format!("subject names message {subject_id}, payload {payload_id}")));
            }
            None => input.message_id = Some(subject_id.to_string()),
            _ => {}
        }
    }
    // `Nats-Msg-Id` may carry the id, alone or as `<tenant>/<id>` (which, unlike an id alone,
    // cannot collide with another tenant's in the stream's duplicate window).
    if input.message_id.is_none()
        && let Some(header) = m.header("Nats-Msg-Id")
    {
        let id = header.rsplit_once('/').map_or(header, |(_, id)| id);
        if MessageId::parse(id).is_ok() {
            input.message_id = Some(id.to_owned());
        }
    }
    let stream_name = subjects.stream(StreamKind::Ingest);
    let seed = format!("{stream_name}:{}", delivery.stream_sequence);
    let message = input
        .validate(delivery.published_at, || MessageId::derived(delivery.published_at, seed.as_bytes()))
        .map_err(|e| reject("invalid_message", e.to_string()))?;
    let subject_tenant = Subjects::tenant_of(tenant_token);
    if message.tenant_id.as_str() != subject_tenant {
        return Err(reject(
            "tenant_mismatch",
            format!("subject tenant `{subject_tenant}` differs from payload tenant `{}`", message.tenant_id),
        ));
    }
    Ok((message, event.importance))
}
