//! What a search may ask for beyond its query: how to retrieve (vector, lexical, hybrid), which
//! messages to consider, and how to weigh relevance, importance and recency.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{ConversationId, FieldError, Role, ValidationError};

/// How candidates are retrieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest neighbours of the query vector.
    Vector,
    /// Postgres full-text search.
    Lexical,
    /// Both, fused by reciprocal-rank fusion.
    #[default]
    Hybrid,
}

/// Which messages a search considers. Every field narrows; none widens past the tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Created at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// Messages whose metadata contains this object (`@>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Importance at least this (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_importance: Option<f64>,
    /// Archived messages too (default: not).
    #[serde(default)]
    pub include_archived: bool,
}

impl SearchFilters {
    /// Whether a filter other than the archived flag narrows the search (without one, any of
    /// the tenant's live messages may match).
    pub fn narrows(&self) -> bool {
        self.conversation_id.is_some()
            || self.role.is_some()
            || self.created_after.is_some()
            || self.created_before.is_some()
            || self.metadata.is_some()
            || self.min_importance.is_some()
    }

    /// Every problem, with the field named.
    pub fn check(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        if let (Some(after), Some(before)) = (self.created_after, self.created_before)
            && after >= before
        {
            errors.push(FieldError::new("created_before", "out_of_range", "must be later than created_after"));
        }
        if let Some(min) = self.min_importance
            && !(0.0..=1.0).contains(&min)
        {
            errors.push(FieldError::new("min_importance", "out_of_range", "must be between 0 and 1"));
        }
        if let Some(metadata) = &self.metadata {
            super::metadata::check_metadata(metadata, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(ValidationError(errors)) }
    }
}

/// How a hit's score is made: `relevance·w_rel + importance·w_imp + exp(−age/τ)·w_rec`, the
/// weights normalised to sum to 1. Relevance is the cosine similarity in vector mode and the
/// reciprocal-rank-fusion score scaled to 0–1 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ranking {
    pub relevance_weight: f64,
    pub importance_weight: f64,
    pub recency_weight: f64,
    /// τ of the recency decay, in days.
    pub decay_days: f64,
    /// k of reciprocal-rank fusion: `1 / (k + rank)`.
    pub rrf_k: f64,
}

impl Default for Ranking {
    /// The original service's intent: 0.6 / 0.3 / 0.1, τ = 7 days; k = 60.
    fn default() -> Self {
        Self { relevance_weight: 0.6, importance_weight: 0.3, recency_weight: 0.1, decay_days: 7.0, rrf_k: 60.0 }
    }
}

impl Ranking {
    /// Every problem, with the field named.
    pub fn check(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        let weights = [
            ("relevance_weight", self.relevance_weight),
            ("importance_weight", self.importance_weight),
            ("recency_weight", self.recency_weight),
        ];
        for (field, w) in weights {
            if !w.is_finite() || w < 0.0 {
                errors.push(FieldError::new(field, "out_of_range", "must be a number of at least 0"));
            }
        }
        if errors.is_empty() && weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            errors.push(FieldError::new("relevance_weight", "out_of_range", "the weights must not all be 0"));
        }
        if !(self.decay_days.is_finite() && self.decay_days > 0.0 && self.decay_days <= 36_500.0) {
            errors.push(FieldError::new("decay_days", "out_of_range", "must be more than 0 and at most 36500"));
        }
        if !(self.rrf_k.is_finite() && (1.0..=10_000.0).contains(&self.rrf_k)) {
            errors.push(FieldError::new("rrf_k", "out_of_range", "must be between 1 and 10000"));
        }
        if errors.is_empty() { Ok(()) } else { Err(ValidationError(errors)) }
    }

    /// The weights scaled to sum to 1: (relevance, importance, recency).
    pub fn normalised(&self) -> (f64, f64, f64) {
        let sum = self.relevance_weight + self.importance_weight + self.recency_weight;
        (self.relevance_weight / sum, self.importance_weight / sum, self.recency_weight / sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_bad_field() {
        let now = Utc::now();
        let f = SearchFilters {
            created_after: Some(now),
            created_before: Some(now),
            min_importance: Some(1.5),
            ..SearchFilters::default()
        };
        let fields: Vec<String> = f.check().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["created_before", "min_importance"]);
        assert!(SearchFilters::default().check().is_ok());
    }

    #[test]
    fn ranking_weights_are_checked_and_normalised() {
        let r = Ranking { relevance_weight: 2.0, importance_weight: 1.0, recency_weight: 1.0, ..Ranking::default() };
        assert_eq!(r.normalised(), (0.5, 0.25, 0.25));
        let (a, b, c) = Ranking::default().normalised();
        assert!((a - 0.6).abs() < 1e-12 && (b - 0.3).abs() < 1e-12 && (c - 0.1).abs() < 1e-12);
        let zero = Ranking { relevance_weight: 0.0, importance_weight: 0.0, recency_weight: 0.0, ..Ranking::default() };
        assert!(zero.check().is_err());
        let bad = Ranking { recency_weight: -1.0, rrf_k: 0.0, ..Ranking::default() };
        let fields: Vec<String> = bad.check().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["recency_weight", "rrf_k"]);
    }
}
