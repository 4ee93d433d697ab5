//! Importance at ingest, the original service's formula: recency 0.4 (linear over 24 h), role
//! 0.2 (system 0.9, user 0.7, assistant 0.5), explicit 0.4, the weights configurable and
//! normalised to sum to 1. A given override *is* the importance (explicit counts 0 otherwise);
//! a pinned message is 1.0. Age at search time is the searcher's decay term, not this one.

use chrono::{DateTime, Utc};

use super::{NewMessage, Role};
use crate::config::ImportanceWeights;

const DAY_SECS: f64 = 86_400.0;

fn role_weight(role: Role) -> f64 {
    match role {
        Role::System => 0.9,
        Role::User => 0.7,
        Role::Assistant => 0.5,
    }
}

/// The importance of `m` as stored at `now`.
pub fn score(m: &NewMessage, now: DateTime<Utc>, weights: ImportanceWeights) -> f64 {
    Parts { role: m.role, created_at: m.created_at, importance_override: m.importance_override, pinned: m.pinned }
        .score(now, weights)
}

/// What importance is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub importance_override: Option<f64>,
    pub pinned: bool,
}

impl Parts {
    /// The importance at `now` (for a stored message, `now` is when it was stored: an edit of
    /// the override or the pin recomputes it as of then).
    pub fn score(self, now: DateTime<Utc>, weights: ImportanceWeights) -> f64 {
        if self.pinned {
            return 1.0;
        }
        if let Some(v) = self.importance_override {
            return v.clamp(0.0, 1.0);
        }
        let w = weights.normalised();
        let age = (now - self.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        let recency = (1.0 - age / DAY_SECS).max(0.0);
        (w.recency * recency + w.role * role_weight(self.role)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, MessageInput};

    fn message(
        role: &str,
        age_hours: i64,
        importance_override: Option<f64>,
        pinned: bool,
    ) -> (NewMessage, DateTime<Utc>) {
        let now = Utc::now();
        let m = MessageInput {
            tenant_id: "t".into(),
            conversation_id: "c".into(),
            role: role.into(),
            content: "x".into(),
            importance_override,
            pinned: Some(pinned),
            created_at: Some(now - chrono::Duration::hours(age_hours)),
            ..MessageInput::default()
        }
        .validate(now, MessageId::new)
        .unwrap();
        (m, now)
    }

    #[test]
    fn fresh_messages_score_as_the_original_did() {
        for (role, expected) in [("user", 0.54), ("system", 0.58), ("assistant", 0.50)] {
            let (m, now) = message(role, 0, None, false);
            assert!((score(&m, now, ImportanceWeights::default()) - expected).abs() < 1e-9, "{role}");
        }
    }

    #[test]
    fn recency_falls_linearly_over_a_day() {
        let (m, now) = message("user", 12, None, false);
        assert!((score(&m, now, ImportanceWeights::default()) - (0.4 * 0.5 + 0.2 * 0.7)).abs() < 1e-6);
        let (m, now) = message("user", 48, None, false);
        assert!((score(&m, now, ImportanceWeights::default()) - 0.14).abs() < 1e-9);
    }

    #[test]
    fn weights_are_normalised() {
        // 1 / 1 / 0 → 0.5 / 0.5 / 0: a fresh user message is 0.5·1 + 0.5·0.7.
        let (m, now) = message("user", 0, None, false);
        let w = ImportanceWeights { recency: 1.0, role: 1.0, explicit: 0.0 };
        assert!((score(&m, now, w) - 0.85).abs() < 1e-9);
        // Doubling every weight changes nothing.
        let doubled = ImportanceWeights { recency: 0.8, role: 0.4, explicit: 0.8 };
        assert!((score(&m, now, doubled) - 0.54).abs() < 1e-9);
    }

    #[test]
    fn override_and_pin_win() {
        let (m, now) = message("user", 0, Some(0.1), false);
        assert_eq!(score(&m, now, ImportanceWeights::default()), 0.1);
        let (m, now) = message("assistant", 0, Some(0.1), true);
        assert_eq!(score(&m, now, ImportanceWeights::default()), 1.0);
    }
}
