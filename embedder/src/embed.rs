//! Every provider call goes through here: the circuit breaker decides whether it may go out, the
//! answer is checked (one per text, the space's dimensions, finite numbers) and normalised, and
//! the outcome is counted. An unusable answer fails the whole call: nothing of it is stored.

use std::sync::Arc;
use std::time::Instant;

use common::config::BreakerConfig;
use common::contract::SpaceRef;

use crate::breaker::{Breaker, State};
use crate::metrics::{EmbedLabels, EmbedOutcome, Metrics, ProviderLabels};
use crate::provider::{Embedding, Provider, ProviderError, Purpose, normalise};

/// The text a half-open circuit probes the provider with, so that no message spends one of its
/// deliveries on a provider that may still be down.
const PROBE_TEXT: &str = "health check";

#[derive(Clone)]
pub struct Embeddings {
    provider: Arc<dyn Provider>,
    breaker: Arc<Breaker>,
    metrics: Metrics,
    space: SpaceRef,
}

impl Embeddings {
    pub fn new(provider: Arc<dyn Provider>, breaker: BreakerConfig, metrics: Metrics) -> Self {
        let breaker = Arc::new(Breaker::new(breaker, metrics.breaker_state.clone()));
        Self { space: provider.space(), provider, breaker, metrics }
    }

    pub fn space(&self) -> &SpaceRef {
        &self.space
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// One answer per text, in order; vectors are unit length and of the space's dimensions.
    pub async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        let mut answers = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.provider.max_batch().max(1)) {
            answers.extend(self.call(chunk, purpose).await?);
        }
        Ok(answers)
    }

    /// Sends the probe text when the circuit is half-open (or about to be). `true` when the
    /// provider answered.
    pub async fn probe(&self) -> bool {
        self.call(&[PROBE_TEXT.to_owned()], Purpose::Document).await.is_ok()
    }

    /// Whether the circuit lets calls through, and if not, for how long it stays open.
    pub fn readiness(&self) -> Result<(), String> {
        match self.breaker.state() {
            State::Open => {
                Err(format!("embedding provider circuit open for {:?}", self.breaker.open_for().unwrap_or_default()))
            }
            State::Closed | State::HalfOpen => Ok(()),
        }
    }

    async fn call(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        let provider = self.provider.name();
        let count = |outcome, n: usize| {
            self.metrics.embeddings.get_or_create(&EmbedLabels { provider, outcome }).inc_by(n as u64);
        };
        let permit = match self.breaker.allow() {
            Ok(permit) => permit,
            Err(retry_in) => {
                count(EmbedOutcome::Failed, texts.len());
                return Err(ProviderError::CircuitOpen { retry_in });
            }
        };
        let started = Instant::now();
        let answer = self.provider.embed(texts, purpose).await.and_then(|answers| self.check(texts.len(), answers));
        self.metrics.provider_batch_size.observe(texts.len() as f64);
        self.metrics
            .provider_duration
            .get_or_create(&ProviderLabels { provider })
            .observe(started.elapsed().as_secs_f64());
        match &answer {
            Ok(answers) => {
                permit.success();
                let refused = answers.iter().filter(|a| a.is_err()).count();
                count(EmbedOutcome::Ok, answers.len() - refused);
                count(EmbedOutcome::Refused, refused);
            }
            Err(e) => {
                tracing::warn!(error = %e, texts = texts.len(), provider, "embedding call failed");
                permit.failure();
                count(EmbedOutcome::Failed, texts.len());
            }
        }
        answer
    }

    fn check(&self, expected: usize, answers: Vec<Embedding>) -> Result<Vec<Embedding>, ProviderError> {
        if answers.len() != expected {
            return Err(ProviderError::InvalidResponse {
                reason: format!("{} answers for {expected} texts", answers.len()),
            });
        }
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(vector) => normalise(vector, self.space.dimensions)
                    .map(Ok)
                    .map_err(|reason| ProviderError::InvalidResponse { reason }),
                Err(refused) => Ok(Err(refused)),
            })
            .collect()
    }
}
