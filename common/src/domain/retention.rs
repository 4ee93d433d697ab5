//! Retention: which messages a tenant keeps, archives and deletes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, MessageId, TenantId, ValidationError};

/// A tenant's retention policy. Pinned messages are exempt from all of it. A `None` turns a rule
/// off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Archive messages older than this many days whose importance is below
    /// `archive_below_importance` (both must hold).
    pub archive_after_days: Option<u32>,
    pub archive_below_importance: f64,
    /// Archive anything older than this many days.
    pub max_age_days: Option<u32>,
    /// Delete messages archived more than this many days ago.
    pub delete_archived_after_days: Option<u32>,
    /// Keep at most this many live messages per conversation; the oldest beyond it are archived.
    pub max_messages_per_conversation: Option<u32>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            archive_after_days: Some(30),
            archive_below_importance: 0.3,
            max_age_days: None,
            delete_archived_after_days: Some(90),
            max_messages_per_conversation: None,
        }
    }
}

impl RetentionPolicy {
    pub fn check(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        let days = [
            ("archive_after_days", self.archive_after_days),
            ("max_age_days", self.max_age_days),
            ("delete_archived_after_days", self.delete_archived_after_days),
        ];
        for (field, value) in days {
            if value.is_some_and(|d| d == 0 || d > 36_500) {
                errors.push(FieldError::new(field, "out_of_range", "must be between 1 and 36500 days"));
            }
        }
        if !(0.0..=1.0).contains(&self.archive_below_importance) {
            errors.push(FieldError::new("archive_below_importance", "out_of_range", "must be between 0 and 1"));
        }
        if self.max_messages_per_conversation == Some(0) {
            errors.push(FieldError::new("max_messages_per_conversation", "out_of_range", "must be at least 1"));
        }
        if errors.is_empty() { Ok(()) } else { Err(ValidationError(errors)) }
    }
}

/// What a retention run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    Archive,
    Delete,
}

/// What a run did (or, dry, would do) for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantRetention {
    pub tenant_id: Option<TenantId>,
    pub archived: u64,
    pub deleted: u64,
    /// Up to 20 of the messages archived (or to be), for a dry run's review.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_archived: Vec<MessageId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_deleted: Vec<MessageId>,
    /// Another run holds this tenant: skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_names_every_bad_field() {
        assert!(RetentionPolicy::default().check().is_ok());
        let bad = RetentionPolicy {
            archive_after_days: Some(0),
            archive_below_importance: 1.5,
            max_age_days: Some(40_000),
            delete_archived_after_days: None,
            max_messages_per_conversation: Some(0),
        };
        let fields: Vec<String> = bad.check().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["archive_after_days", "max_age_days", "archive_below_importance", "max_messages_per_conversation"]
        );
    }
}
