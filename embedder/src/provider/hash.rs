//! The `hash` provider: deterministic feature hashing: every word token adds ±1 to one
//! of 384 buckets, and the vector is L2-normalised, so texts that share words are close. It needs
//! no model and no network: tests and benchmarks use it.

use async_trait::async_trait;
use common::contract::SpaceRef;

use super::{Embedding, Provider, ProviderError, Purpose};

/// Deterministic feature hashing of word tokens.
#[derive(Debug, Clone)]
pub struct HashProvider {
    dimensions: usize,
}

impl HashProvider {
    pub const DIMENSIONS: usize = 384;
    pub const MODEL: &'static str = "feature-hash-v1";

    pub fn new() -> Self {
        Self { dimensions: Self::DIMENSIONS }
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimensions];
        let lower = text.to_lowercase();
        for token in lower.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()) {
            add_feature(&mut v, token);
        }
        if v.iter().all(|x| *x == 0.0) {
            // No word at all (emoji, punctuation), or words whose features cancel out: the
            // whole text is one more feature, so the vector is never zero and cosine stays defined.
            add_feature(&mut v, lower.trim());
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Default for HashProvider {
    fn default() -> Self {
        Self::new()
    }
}

fn add_feature(v: &mut [f32], token: &str) {
    let h = fnv1a_64(token.as_bytes());
    let bucket = (h % v.len() as u64) as usize;
    v[bucket] += if h >> 63 == 0 { 1.0 } else { -1.0 };
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

#[async_trait]
impl Provider for HashProvider {
    fn name(&self) -> &'static str {
        "hash"
    }

    fn space(&self) -> SpaceRef {
        SpaceRef { provider: self.name().into(), model: Self::MODEL.into(), dimensions: self.dimensions as u32 }
    }

    async fn embed(&self, texts: &[String], _purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        Ok(texts.iter().map(|t| Ok(self.vector(t))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_normalised_and_deterministic() {
        let p = HashProvider::new();
        let v = p.vector("I moved to Lisbon in May");
        assert_eq!(v.len(), 384);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
        assert_eq!(v, p.vector("i moved to LISBON in may!"));
    }

    #[test]
    fn shared_words_make_texts_closer() {
        let p = HashProvider::new();
        let doc = p.vector("I moved to Lisbon in May");
        let related = p.vector("where in Lisbon did you move");
        let unrelated = p.vector("the quarterly budget spreadsheet");
        assert!(cosine(&doc, &related) > cosine(&doc, &unrelated) + 0.2);
    }

    #[test]
    fn text_without_words_still_has_a_direction() {
        let v = HashProvider::new().vector("🙂 !!");
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn words_whose_features_cancel_out_still_have_a_direction() {
        let p = HashProvider::new();
        // Two words in one bucket with opposite signs.
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (0..100_000)
            .map(|i| format!("w{i}"))
            .find_map(|word| {
                let h = fnv1a_64(word.as_bytes());
                let (bucket, positive) = (h % HashProvider::DIMENSIONS as u64, h >> 63 == 0);
                match seen.get(&(bucket, !positive)) {
                    Some(other) => Some((String::clone(other), word)),
                    None => {
                        seen.insert((bucket, positive), word);
                        None
                    }
                }
            })
            .expect("a cancelling pair");
        let v = p.vector(&format!("{a} {b}"));
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5, "{a} {b}");
    }
}
