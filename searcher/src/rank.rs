//! Ranking of vector candidates, the original service's intent: final score =
//! 0.6·similarity + 0.3·importance + 0.1·exp(−age/τ), τ = 7 days.

use chrono::{DateTime, Utc};
use common::contract::SearchHit;
use common::store::VectorHit;

const W_SIMILARITY: f64 = 0.6;
const W_IMPORTANCE: f64 = 0.3;
const W_DECAY: f64 = 0.1;
/// The e-folding time of the recency decay.
const TAU_SECS: f64 = 7.0 * 86_400.0;

/// `exp(−age/τ)`; a message from the future counts as brand new.
pub fn decay(created_at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    let age = (now - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    (-age / TAU_SECS).exp()
}

pub fn score(similarity: f64, importance: f64, decay: f64) -> f64 {
    W_SIMILARITY * similarity + W_IMPORTANCE * importance + W_DECAY * decay
}

/// Scores every candidate and keeps the best `top_k`, best first (ties: newer first).
pub fn rank(candidates: Vec<VectorHit>, top_k: usize, now: DateTime<Utc>) -> Vec<SearchHit> {
    let mut hits: Vec<SearchHit> = candidates
        .into_iter()
        .map(|c| {
            let m = c.message;
            let decay = decay(m.created_at, now);
            SearchHit {
                message_id: m.id,
                score: score(c.similarity, m.importance, decay),
                similarity: c.similarity,
                decay,
                importance: m.importance,
                content: m.content,
                role: m.role,
                name: m.name,
                metadata: m.metadata,
                created_at: m.created_at,
                conversation_id: m.conversation_id,
            }
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.created_at.cmp(&a.created_at)));
    hits.truncate(top_k);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn decay_is_one_when_fresh_and_one_over_e_after_a_week() {
        let now = Utc::now();
        assert!((decay(now, now) - 1.0).abs() < 1e-12);
        assert!((decay(now - Duration::days(7), now) - (-1f64).exp()).abs() < 1e-9);
        assert!((decay(now + Duration::hours(1), now) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn score_weights_match_the_original() {
        // Hand-computed: 0.6·0.5 + 0.3·0.54 + 0.1·1 = 0.562.
        assert!((score(0.5, 0.54, 1.0) - 0.562).abs() < 1e-12);
    }
}
