//! The contract between services and with direct NATS publishers: subjects, stream names,
//! headers, events and request/reply payloads. No subject or stream name is written anywhere
//! else. Every payload carries `"v": 1`; a breaking change bumps it together with the `v1` token.

mod events;
mod requests;
mod subjects;

use serde::{Deserialize, Serialize};

pub use events::*;
pub use requests::*;
pub use subjects::{StreamKind, Subjects};

/// Payload version of every event and request defined here.
pub const VERSION: u8 = 1;

/// Header carrying the request id from the gateway to every worker.
pub const REQUEST_ID_HEADER: &str = "Memory-Request-Id";
/// Set on a request whose caller stops waiting after this many milliseconds: the worker stops
/// working on it then (its database work is cancelled too). Without it, the work carries on to
/// the end whoever waits (deletes, retention runs).
pub const TIMEOUT_HEADER: &str = "Memory-Timeout-Ms";
/// Set (to the revision) on an ingest event that asks for a stored message to be embedded again
/// after an edit: the embedder never inserts from it, so it cannot bring back a message deleted
/// in the meantime.
pub const REEMBED_HEADER: &str = "Memory-Reembed";
/// Headers set on a dead-lettered message: why it was rejected and where it came from.
pub const DEAD_REASON_HEADER: &str = "Memory-Dead-Reason";
pub const DEAD_CODE_HEADER: &str = "Memory-Dead-Code";
pub const DEAD_SUBJECT_HEADER: &str = "Memory-Dead-Subject";
pub const DEAD_SEQUENCE_HEADER: &str = "Memory-Dead-Sequence";
/// Set on a dead letter whose payload was cut to [`DEAD_PAYLOAD_MAX`]: the original size in bytes.
pub const DEAD_TRUNCATED_HEADER: &str = "Memory-Dead-Truncated";
/// Most payload bytes a dead letter keeps: enough to diagnose, and always within the dead-letter
/// stream's message size whatever a publisher sent.
pub const DEAD_PAYLOAD_MAX: usize = 60 * 1024;
/// The dead-letter stream's largest message: the payload cap plus room for our own headers.
pub const DEAD_MESSAGE_MAX: usize = 64 * 1024;

/// Every request/reply answer: the result, or a typed error the caller maps instead of timing out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(RemoteError),
}

/// A failure reported by a service over request/reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    pub code: RemoteErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorCode {
    /// The request itself is wrong (bad JSON, failed validation).
    BadRequest,
    /// The service cannot answer now (store or dependency down); retry later.
    Unavailable,
    /// No embedding space is active yet: nothing has been embedded.
    NoActiveSpace,
    /// No such message (of this tenant).
    NotFound,
    /// The message is accepted but not stored yet.
    Queued,
    /// The worker is handling as many requests as it can: retry shortly (another replica may
    /// take it).
    Busy,
}

impl std::fmt::Display for RemoteErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::NoActiveSpace => "no_active_space",
            Self::NotFound => "not_found",
            Self::Queued => "queued",
            Self::Busy => "busy",
        })
    }
}

impl RemoteError {
    pub fn new(code: RemoteErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_tagged() {
        let ok: Reply<u8> = Reply::Ok(1);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":1}"#);
        let err: Reply<u8> = Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, "db down"));
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"error":{"code":"unavailable","message":"db down"}}"#);
    }
}
