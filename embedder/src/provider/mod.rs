//! Embedding providers: `gemini` (the Gemini API), `local` (all-MiniLM-L6-v2 on the CPU with
//! candle) and `hash` (deterministic feature hashing, for tests and benchmarks). A provider turns
//! texts into vectors of its one space; it never substitutes another model's vectors.

mod gemini;
mod hash;
mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::config::{Config, ConfigError, Provider as ProviderKind};
use common::contract::SpaceRef;

pub use gemini::GeminiProvider;
pub use hash::HashProvider;
pub use local::LocalProvider;

/// Whether a text is stored or searched for; real models embed the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Document,
    Query,
}

/// The provider's answer for one text: a vector, or its refusal of that text (which retrying
/// cannot change).
pub type Embedding = Result<Vec<f32>, Refused>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A call that produced nothing. Every variant but `CircuitOpen` counts against the breaker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Overloaded, rate-limited, timed out or unreachable, after the provider's own retries.
    #[error("the embedding provider is unavailable: {reason}")]
    Unavailable { reason: String, retry_after: Option<Duration> },
    /// The provider refuses every request (a bad key, no permission, an unknown model): nothing
    /// embeds until an operator acts, so messages wait rather than fail.
    #[error("the embedding provider refuses requests: {reason}")]
    Rejected { reason: String },
    /// An answer that cannot be used: wrong count or dimensions, not a number, not JSON.
    #[error("the embedding provider's answer is unusable: {reason}")]
    InvalidResponse { reason: String },
    /// The local model failed to run.
    #[error("the local model failed: {reason}")]
    Model { reason: String },
    /// The circuit breaker is open; no call was made.
    #[error("the embedding provider's circuit is open for {retry_in:?}")]
    CircuitOpen { retry_in: Duration },
}

impl ProviderError {
    /// How long to wait before trying again, when the provider or the breaker said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::CircuitOpen { retry_in } => Some(*retry_in),
            _ => None,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// `gemini`, `local` or `hash`: the metrics label.
    fn name(&self) -> &'static str;
    /// The space this provider's vectors live in.
    fn space(&self) -> SpaceRef;
    /// Most texts one `embed` call should carry; callers split larger inputs.
    fn max_batch(&self) -> usize {
        100
    }
    /// One answer per text, in order. Vectors need not be normalised: the caller checks their
    /// dimensions and normalises them.
    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError>;
}

/// The provider the configuration names. Checks what only the embedder needs (a Gemini key, the
/// model directory) and loads the local model.
pub fn from_config(config: &Config) -> Result<Arc<dyn Provider>, ConfigError> {
    let embedder = &config.embedder;
    Ok(match embedder.provider {
        ProviderKind::Hash => Arc::new(HashProvider::new()),
        ProviderKind::Gemini => Arc::new(GeminiProvider::new(&embedder.gemini)?),
        ProviderKind::Local => {
            let dir = embedder.local.model_dir.as_ref().ok_or_else(|| {
                ConfigError::one(
                    "MEMORY_MODEL_DIR is not set: the `local` provider needs the model files (run scripts/fetch-model.sh)",
                )
            })?;
            let provider = LocalProvider::load(dir, embedder.local.batch_size)
                .map_err(|e| ConfigError::one(format!("MEMORY_MODEL_DIR={}: {e}", dir.display())))?;
            Arc::new(provider)
        }
    })
}

/// Checks a vector against its space and scales it to unit length. `Err` says what is wrong.
pub fn normalise(mut vector: Vec<f32>, dimensions: u32) -> Result<Vec<f32>, String> {
    if vector.len() != dimensions as usize {
        return Err(format!("a vector has {} dimensions, the space has {dimensions}", vector.len()));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("a vector holds a value that is not a finite number".into());
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return Err("a vector is all zeros".into());
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_checks_and_scales() {
        assert_eq!(normalise(vec![3.0, 4.0], 2).unwrap(), vec![0.6, 0.8]);
        assert!(normalise(vec![1.0], 2).unwrap_err().contains("1 dimensions"));
        assert!(normalise(vec![f32::NAN, 1.0], 2).is_err());
        assert!(normalise(vec![0.0, 0.0], 2).is_err());
    }
}
