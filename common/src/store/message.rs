//! A message as stored, the record every role reads.

use std::ops::Deref;

use chrono::{DateTime, Utc};

use crate::domain::{MessageStatus, MessageView, NewMessage};

/// A message as stored: the message as accepted, and what storing it added. It reads as the
/// accepted message too (`stored.tenant_id`), through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub message: NewMessage,
    pub importance: f64,
    pub status: MessageStatus,
    pub failure_reason: Option<String>,
    pub stored_at: DateTime<Utc>,
    /// Its last change: stored, embedded, edited, archived or restored.
    pub updated_at: DateTime<Utc>,
    /// Content edits so far; a vector is stored only for the revision it was computed from.
    pub revision: i32,
}

impl Deref for StoredMessage {
    type Target = NewMessage;

    fn deref(&self) -> &NewMessage {
        &self.message
    }
}

impl StoredMessage {
    pub fn view(self) -> MessageView {
        MessageView {
            importance: Some(self.importance),
            failure_reason: self.failure_reason,
            stored_at: Some(self.stored_at),
            updated_at: Some(self.updated_at),
            ..MessageView::accepted(self.message, self.status)
        }
    }
}
