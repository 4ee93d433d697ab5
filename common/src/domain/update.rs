//! An edit to a stored message, and its validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::message::{check_content, check_override, metadata_map};
use super::{FieldError, ValidationError};

/// A change to a stored message (`PUT /v1/messages/{id}`): every field is optional, and only
/// the fields given change. `importance_override: null` clears the override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageUpdate {
    /// New content (1–100,000 characters): the message is embedded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Replaces the metadata; `null` means `{}`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// 0–1, or `null` to go back to the computed importance.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub importance_override: Option<Option<f64>>,
    /// Pinned messages rank with importance 1.0 and are exempt from retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// Archive (`true`) or restore (`false`) the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
}

/// Tells a field given as `null` (`Some(null)`) from an absent one (`None`).
fn present<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A validated [`MessageUpdate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidUpdate {
    pub content: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub importance_override: Option<Option<f64>>,
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
}

impl MessageUpdate {
    /// Checks every given field with the rules of a new message; at least one must be given.
    pub fn validate(self) -> Result<ValidUpdate, ValidationError> {
        let mut errors = Vec::new();
        if let Some(content) = &self.content {
            check_content(content, &mut errors);
        }
        let metadata = self.metadata.map(|m| metadata_map(Some(m), &mut errors));
        check_override(self.importance_override.flatten(), &mut errors);
        let empty = self.content.is_none()
            && metadata.is_none()
            && self.importance_override.is_none()
            && self.pinned.is_none()
            && self.archived.is_none();
        if empty {
            errors.push(FieldError::new(
                "",
                "empty_update",
                "give at least one of content, metadata, importance_override, pinned, archived",
            ));
        }
        if !errors.is_empty() {
            return Err(ValidationError(errors));
        }
        Ok(ValidUpdate {
            content: self.content,
            metadata,
            importance_override: self.importance_override,
            pinned: self.pinned,
            archived: self.archived,
        })
    }
}
