//! Fusion and scoring, pure functions. Candidates come from the vector index and from full-text
//! search; reciprocal-rank fusion (`Σ 1/(k + rank)`) orders them, and the final score is
//! `w_rel·relevance + w_imp·importance + w_rec·exp(−age/τ)` with the weights normalised to 1.
//!
//! Relevance is the cosine similarity in vector mode (the original service's score). In lexical
//! and hybrid modes it is the fused position spread over 0–1: the first of n fused candidates
//! has 1, the last 1/n. Fused scores themselves are too close together (1/61 and 1/70 with
//! k = 60) to hold their own against importance and recency; positions keep the fusion's order
//! and give it the same range as the other two terms. Measured on the relevance set
//! (gateway/tests/data), this and a shallow fusion window (twice `top_k` from each list) are what
//! let hybrid beat both retrievers alone.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::contract::{Explain, SearchHit};
use common::domain::{MessageId, Ranking, SearchMode};
use common::store::{LexicalHit, StoredMessage, VectorHit};

/// One message found by either retriever.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub message: StoredMessage,
    pub similarity: Option<f64>,
    /// 1-based.
    pub vector_rank: Option<u32>,
    /// 1-based.
    pub lexical_rank: Option<u32>,
    /// The full-text score: the summed rarity of the query words it contains.
    pub lexical_score: Option<f64>,
}

/// Merges the two ranked lists (each best first) into one candidate per message.
pub fn merge(vector: Vec<VectorHit>, lexical: Vec<LexicalHit>) -> Vec<Candidate> {
    let mut by_id: HashMap<MessageId, usize> = HashMap::new();
    let mut out: Vec<Candidate> = Vec::with_capacity(vector.len() + lexical.len());
    for (i, hit) in vector.into_iter().enumerate() {
        by_id.insert(hit.message.message_id, out.len());
        out.push(Candidate {
            message: hit.message,
            similarity: Some(hit.similarity),
            vector_rank: Some(i as u32 + 1),
            lexical_rank: None,
            lexical_score: None,
        });
    }
    for (i, hit) in lexical.into_iter().enumerate() {
        let rank = Some(i as u32 + 1);
        match by_id.get(&hit.message.message_id) {
            Some(&at) => {
                out[at].lexical_rank = rank;
                out[at].lexical_score = Some(hit.rank);
            }
            None => {
                by_id.insert(hit.message.message_id, out.len());
                out.push(Candidate {
                    message: hit.message,
                    similarity: hit.similarity,
                    vector_rank: None,
                    lexical_rank: rank,
                    lexical_score: Some(hit.rank),
                });
            }
        }
    }
    out
}

/// `Σ 1/(k + rank)` over the lists the candidate is in.
pub fn fused(c: &Candidate, k: f64) -> f64 {
    [c.vector_rank, c.lexical_rank].into_iter().flatten().map(|r| 1.0 / (k + f64::from(r))).sum()
}

/// `exp(−age/τ)`; a message from the future counts as brand new.
pub fn decay(created_at: DateTime<Utc>, now: DateTime<Utc>, decay_days: f64) -> f64 {
    let age = (now - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    (-age / (decay_days * 86_400.0)).exp()
}

/// Scores every candidate and keeps the best `top_k`, best first (ties: newer first).
pub fn rank(
    candidates: Vec<Candidate>,
    mode: SearchMode,
    ranking: &Ranking,
    top_k: usize,
    now: DateTime<Utc>,
    explain: bool,
) -> Vec<SearchHit> {
    let (w_rel, w_imp, w_rec) = ranking.normalised();
    let normalised = Ranking { relevance_weight: w_rel, importance_weight: w_imp, recency_weight: w_rec, ..*ranking };
    let mut fused_order: Vec<(f64, Candidate)> =
        candidates.into_iter().map(|c| (fused(&c, ranking.rrf_k), c)).collect();
    // Best fused first; ties go to the better vector rank, then the better lexical rank.
    fused_order.sort_by(|(fa, a), (fb, b)| {
        fb.total_cmp(fa)
            .then(a.vector_rank.unwrap_or(u32::MAX).cmp(&b.vector_rank.unwrap_or(u32::MAX)))
            .then(a.lexical_rank.unwrap_or(u32::MAX).cmp(&b.lexical_rank.unwrap_or(u32::MAX)))
    });
    let n = fused_order.len().max(1) as f64;
    let mut hits: Vec<SearchHit> = fused_order
        .into_iter()
        .enumerate()
        .map(|(position, (fused, c))| {
            let relevance = match mode {
                SearchMode::Vector => c.similarity.unwrap_or(0.0),
                SearchMode::Lexical | SearchMode::Hybrid => 1.0 - position as f64 / n,
            };
            let (importance, m) = (c.message.importance, c.message.message);
            let decay = decay(m.created_at, now, ranking.decay_days);
            let score = w_rel * relevance + w_imp * importance + w_rec * decay;
            SearchHit {
                message_id: m.message_id,
                score,
                similarity: c.similarity,
                decay,
                importance,
                content: m.content,
                role: m.role,
                name: m.name,
                metadata: m.metadata,
                created_at: m.created_at,
                conversation_id: m.conversation_id,
                explain: explain.then_some(Explain {
                    mode,
                    similarity: c.similarity,
                    vector_rank: c.vector_rank,
                    lexical_rank: c.lexical_rank,
                    lexical_score: c.lexical_score,
                    fused,
                    relevance,
                    importance,
                    decay,
                    score,
                    ranking: normalised,
                }),
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
    use common::domain::{ConversationId, MessageStatus, NewMessage, Role, TenantId};

    fn message(content: &str, importance: f64, age: Duration, now: DateTime<Utc>) -> StoredMessage {
        let message = NewMessage {
            message_id: MessageId::new(),
            tenant_id: TenantId::parse("t").unwrap(),
            conversation_id: ConversationId::parse("c").unwrap(),
            role: Role::User,
            name: None,
            content: content.into(),
            metadata: Default::default(),
            importance_override: None,
            pinned: false,
            created_at: now - age,
            archived_at: None,
        };
        StoredMessage {
            message,
            importance,
            status: MessageStatus::Embedded,
            failure_reason: None,
            stored_at: now - age,
            updated_at: now - age,
            revision: 0,
        }
    }

    #[test]
    fn decay_is_one_when_fresh_and_one_over_e_after_tau() {
        let now = Utc::now();
        assert!((decay(now, now, 7.0) - 1.0).abs() < 1e-12);
        assert!((decay(now - Duration::days(7), now, 7.0) - (-1f64).exp()).abs() < 1e-9);
        assert!((decay(now - Duration::days(1), now, 1.0) - (-1f64).exp()).abs() < 1e-9);
        assert!((decay(now + Duration::hours(1), now, 7.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn fusion_adds_reciprocal_ranks() {
        let now = Utc::now();
        let a = message("a", 0.5, Duration::zero(), now);
        let b = message("b", 0.5, Duration::zero(), now);
        let c = message("c", 0.5, Duration::zero(), now);
        let vector =
            vec![VectorHit { message: a.clone(), similarity: 0.9 }, VectorHit { message: b.clone(), similarity: 0.8 }];
        let lexical = vec![
            LexicalHit { message: c.clone(), rank: 0.3, similarity: None },
            LexicalHit { message: a.clone(), rank: 0.1, similarity: None },
        ];
        let merged = merge(vector, lexical);
        assert_eq!(merged.len(), 3);
        let get = |id| merged.iter().find(|m| m.message.message_id == id).unwrap();
        // a: vector 1, lexical 2 → 1/61 + 1/62.
        assert_eq!((get(a.message_id).vector_rank, get(a.message_id).lexical_rank), (Some(1), Some(2)));
        assert!((fused(get(a.message_id), 60.0) - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-15);
        // b: vector 2 only; c: lexical 1 only, and no similarity known.
        assert!((fused(get(b.message_id), 60.0) - 1.0 / 62.0).abs() < 1e-15);
        assert_eq!(get(c.message_id).similarity, None);
        assert!((fused(get(c.message_id), 60.0) - 1.0 / 61.0).abs() < 1e-15);
    }

    #[test]
    fn hybrid_scores_are_hand_computable() {
        let now = Utc::now();
        let a = message("a", 0.54, Duration::zero(), now);
        let b = message("b", 0.5, Duration::days(7), now);
        let merged = merge(
            vec![VectorHit { message: a.clone(), similarity: 0.9 }, VectorHit { message: b.clone(), similarity: 0.8 }],
            vec![LexicalHit { message: a.clone(), rank: 0.2, similarity: None }],
        );
        let hits = rank(merged, SearchMode::Hybrid, &Ranking::default(), 10, now, true);
        // a: first in both lists, fused 1/61 + 1/61, first of 2 → relevance 1;
        // 0.6·1 + 0.3·0.54 + 0.1·1 = 0.862.
        assert_eq!(hits[0].message_id, a.message_id);
        assert!((hits[0].score - 0.862).abs() < 1e-9, "{}", hits[0].score);
        let explain = hits[0].explain.as_ref().unwrap();
        assert!((explain.fused - 2.0 / 61.0).abs() < 1e-15);
        // b: second in one list, fused 1/62, second of 2 → relevance 1/2; decay e^-1.
        let expected = 0.6 * 0.5 + 0.3 * 0.5 + 0.1 * (-1f64).exp();
        assert!((hits[1].score - expected).abs() < 1e-9);
        let explain = hits[1].explain.as_ref().unwrap();
        assert_eq!((explain.vector_rank, explain.lexical_rank), (Some(2), None));
        assert!((explain.fused - 1.0 / 62.0).abs() < 1e-15);
        assert!((explain.relevance - 0.5).abs() < 1e-12);
    }

    #[test]
    fn vector_mode_keeps_the_original_score() {
        let now = Utc::now();
        let a = message("a", 0.54, Duration::zero(), now);
        let hits = rank(
            merge(vec![VectorHit { message: a, similarity: 0.5 }], vec![]),
            SearchMode::Vector,
            &Ranking::default(),
            5,
            now,
            false,
        );
        // 0.6·0.5 + 0.3·0.54 + 0.1·1 = 0.562, as the original service scored it.
        assert!((hits[0].score - 0.562).abs() < 1e-12);
        assert!(hits[0].explain.is_none());
    }

    #[test]
    fn weights_are_normalised_and_top_k_keeps_the_best() {
        let now = Utc::now();
        let low = message("low", 0.1, Duration::zero(), now);
        let high = message("high", 0.9, Duration::zero(), now);
        let only_importance =
            Ranking { relevance_weight: 0.0, importance_weight: 5.0, recency_weight: 0.0, ..Ranking::default() };
        let hits = rank(
            merge(
                vec![
                    VectorHit { message: low, similarity: 0.99 },
                    VectorHit { message: high.clone(), similarity: 0.1 },
                ],
                vec![],
            ),
            SearchMode::Vector,
            &only_importance,
            1,
            now,
            false,
        );
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message_id, high.message_id);
        assert!((hits[0].score - 0.9).abs() < 1e-12);
    }
}
