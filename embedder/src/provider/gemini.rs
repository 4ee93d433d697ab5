//! The Gemini API: `POST {base}/models/{model}:batchEmbedContents`, at most 100 texts a call, the
//! key in `x-goog-api-key`. Calls that fail with 429, 5xx, a timeout or a network error are
//! retried with exponential backoff and jitter, honouring `Retry-After` (or the body's
//! `RetryInfo`). 400 and 403 are never retried: a 400 about the input is narrowed down, by
//! splitting the batch, to the texts at fault, which are refused; the others still embed.

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use common::config::{ConfigError, GeminiConfig, Secret};
use common::contract::SpaceRef;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Embedding, Provider, ProviderError, Purpose, Refused};

/// The API's limit on requests in one `batchEmbedContents` call.
const MAX_BATCH: usize = 100;
/// A text any working deployment embeds.
const PROBE_TEXT: &str = "hello";

#[derive(Debug)]
pub struct GeminiProvider {
    client: reqwest::Client,
    url: String,
    key: Secret,
    /// `models/{model}`, as every request in a batch must name it.
    model: String,
    dimensions: u32,
    max_chars: usize,
    backoff: ExponentialBuilder,
    retry_max: Duration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedRequest<'a> {
    model: &'a str,
    content: Content<'a>,
    task_type: &'static str,
    output_dimensionality: u32,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    requests: Vec<EmbedRequest<'a>>,
}

#[derive(Deserialize)]
struct BatchResponse {
    embeddings: Vec<Values>,
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorStatus,
}

#[derive(Deserialize)]
struct ErrorStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// What went wrong with one HTTP call.
#[derive(Debug)]
enum CallError {
    /// Worth retrying: 429, 5xx, a timeout, a network error.
    Transient { reason: String, retry_after: Option<Duration> },
    /// 400 about the request's content: some text is at fault.
    BadInput { reason: String },
    /// Refused whatever the input: bad key, no permission, unknown model.
    Rejected { reason: String },
    /// 200 with an unusable body.
    Invalid { reason: String },
}

impl CallError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

impl From<CallError> for ProviderError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Transient { reason, retry_after } => ProviderError::Unavailable { reason, retry_after },
            CallError::Rejected { reason } | CallError::BadInput { reason } => ProviderError::Rejected { reason },
            CallError::Invalid { reason } => ProviderError::InvalidResponse { reason },
        }
    }
}

impl GeminiProvider {
    pub fn new(config: &GeminiConfig) -> Result<Self, ConfigError> {
        let key = config.api_key.clone().ok_or_else(|| {
            ConfigError::one("MEMORY_GEMINI_API_KEY is not set: the `gemini` provider needs an API key")
        })?;
        // reqwest is built without a crypto provider so that one (ring, as sqlx and async-nats
        // use) serves every TLS client in the process. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("memory-layer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::one(format!("cannot build the Gemini HTTP client: {e}")))?;
        let model = config.model.strip_prefix("models/").unwrap_or(&config.model);
        let base = config.base_url.trim_end_matches('/');
        Ok(Self {
            client,
            url: format!("{base}/models/{model}:batchEmbedContents"),
            key,
            model: format!("models/{model}"),
            dimensions: config.dimensions,
            max_chars: config.max_chars,
            backoff: ExponentialBuilder::new()
                .with_jitter()
                .with_min_delay(config.retry_min)
                .with_max_delay(config.retry_max)
                .with_max_times(config.max_retries),
            retry_max: config.retry_max,
        })
    }

    /// One `batchEmbedContents` call, without retries.
    async fn call(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>, CallError> {
        let task_type = match purpose {
            Purpose::Document => "RETRIEVAL_DOCUMENT",
            Purpose::Query => "RETRIEVAL_QUERY",
        };
        let body = BatchRequest {
            requests: texts
                .iter()
                .map(|text| EmbedRequest {
                    model: &self.model,
                    content: Content { parts: [Part { text: truncate(text, self.max_chars) }] },
                    task_type,
                    output_dimensionality: self.dimensions,
                })
                .collect(),
        };
        let response = self
            .client
            .post(&self.url)
            .header("x-goog-api-key", self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::Transient { reason: describe(&e), retry_after: None })?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes =
            response.bytes().await.map_err(|e| CallError::Transient { reason: describe(&e), retry_after: None })?;
        if status.is_success() {
            let parsed: BatchResponse = serde_json::from_slice(&bytes).map_err(|e| CallError::Invalid {
                reason: format!("the response is not a batch of embeddings: {e}"),
            })?;
            if parsed.embeddings.len() != texts.len() {
                return Err(CallError::Invalid {
                    reason: format!("{} embeddings returned for {} texts", parsed.embeddings.len(), texts.len()),
                });
            }
            return Ok(parsed.embeddings.into_iter().map(|e| e.values).collect());
        }
        Err(classify(status, &headers, &bytes))
    }

    /// A call with retries on transient failures.
    async fn call_with_retries(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>, CallError> {
        (|| self.call(texts, purpose))
            .retry(self.backoff)
            .when(CallError::is_transient)
            .adjust(|e, next| {
                let next = next?;
                match e {
                    // The server said when: wait that long, unless it is longer than we sleep
                    // in process, in which case the batch waits in the stream instead.
                    CallError::Transient { retry_after: Some(after), .. } => {
                        (*after <= self.retry_max).then_some(*after)
                    }
                    _ => Some(next),
                }
            })
            .notify(|e, after| tracing::warn!(error = ?e, retry_in = ?after, "Gemini call failed; retrying"))
            .await
    }

    /// Embeds `texts`; when Gemini refuses the batch's content, narrows it down to the texts at
    /// fault.
    async fn embed_or_split(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        match self.call_with_retries(texts, purpose).await {
            Ok(vectors) => Ok(vectors.into_iter().map(Ok).collect()),
            Err(CallError::BadInput { reason }) => self.narrow(texts, purpose, reason).await,
            Err(e) => Err(e.into()),
        }
    }

    /// A batch Gemini refused as invalid: one text is refused with the reason; a larger batch is
    /// split in two and each half tried on its own.
    async fn narrow(
        &self,
        texts: &[String],
        purpose: Purpose,
        reason: String,
    ) -> Result<Vec<Embedding>, ProviderError> {
        if texts.len() == 1 {
            return Ok(vec![Err(Refused(reason))]);
        }
        tracing::info!(texts = texts.len(), %reason, "Gemini refused a batch; splitting it to find the texts at fault");
        let (left, right) = texts.split_at(texts.len() / 2);
        let mut answers = Box::pin(self.embed_or_split(left, purpose)).await?;
        answers.extend(Box::pin(self.embed_or_split(right, purpose)).await?);
        Ok(answers)
    }
}

#[async_trait]
impl Provider for GeminiProvider {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn space(&self) -> SpaceRef {
        let model = self.model.strip_prefix("models/").unwrap_or(&self.model);
        SpaceRef { provider: self.name().into(), model: model.into(), dimensions: self.dimensions }
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        let mut answers = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_BATCH) {
            let reason = match self.call_with_retries(chunk, purpose).await {
                Ok(vectors) => {
                    answers.extend(vectors.into_iter().map(Ok));
                    continue;
                }
                Err(CallError::BadInput { reason }) => reason,
                Err(e) => return Err(e.into()),
            };
            // Is it these texts, or would Gemini refuse any request (an unsupported
            // dimensionality or task type, say)? A text that always embeds tells; blaming the
            // messages for a deployment's fault would fail every one of them.
            match self.call_with_retries(&[PROBE_TEXT.to_owned()], purpose).await {
                Ok(_) => answers.extend(self.narrow(chunk, purpose, reason).await?),
                Err(CallError::BadInput { reason }) => return Err(ProviderError::Rejected { reason }),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(answers)
    }
}

/// The error of a non-2xx answer.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CallError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let reason = match &parsed {
        Some(e) if !e.message.is_empty() => format!("{status} {}: {}", e.status, e.message.trim()),
        _ => format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]).trim()),
    };
    let details = parsed.as_ref().map_or(&[][..], |e| &e.details[..]);
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            let retry_after = retry_after_header(headers).or_else(|| retry_info(details));
            CallError::Transient { reason, retry_after }
        }
        s if s.is_server_error() => CallError::Transient { reason, retry_after: retry_after_header(headers) },
        // A bad key is a 400 too; it is the deployment's fault, not the text's. So is a 400
        // FAILED_PRECONDITION (an unsupported location, say).
        StatusCode::BAD_REQUEST
            if parsed.as_ref().is_some_and(|e| e.status == "INVALID_ARGUMENT")
                && !error_reason_is(details, "API_KEY_INVALID") =>
        {
            CallError::BadInput { reason }
        }
        _ => CallError::Rejected { reason },
    }
}

/// The longest wait a provider may ask for: a larger one (or a malformed one) is taken as this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// `Retry-After` in seconds, at most [`RETRY_AFTER_MAX`]. (The HTTP-date form is not used by
/// Google APIs.)
fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX))
}

/// `google.rpc.RetryInfo.retryDelay`, a proto3 JSON duration such as `"37s"` or `"1.5s"`.
fn retry_info(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|d| d["@type"].as_str().is_some_and(|t| t.ends_with("google.rpc.RetryInfo")))
        .find_map(|d| d["retryDelay"].as_str()?.strip_suffix('s')?.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::try_from_secs_f64(s).unwrap_or(RETRY_AFTER_MAX).min(RETRY_AFTER_MAX))
}

fn error_reason_is(details: &[Value], reason: &str) -> bool {
    details.iter().any(|d| d["reason"].as_str() == Some(reason))
}

/// The error and its causes, e.g. "error sending request: operation timed out".
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The first `max` characters of `text`.
fn truncate(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(i, _)| &text[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    #[test]
    fn errors_are_classified_by_status_and_reason() {
        let none = HeaderMap::new();
        let body = |code: u16, status: &str, details: Value| {
            serde_json::to_vec(&json!({"error": {"code": code, "message": "m", "status": status, "details": details}}))
                .unwrap()
        };
        let bad_key = body(
            400,
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]),
        );
        assert!(matches!(classify(StatusCode::BAD_REQUEST, &none, &bad_key), CallError::Rejected { .. }));
        let bad_text = body(400, "INVALID_ARGUMENT", json!([]));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, &none, &bad_text), CallError::BadInput { .. }));
        let location = body(400, "FAILED_PRECONDITION", json!([]));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, &none, &location), CallError::Rejected { .. }));
        assert!(matches!(classify(StatusCode::FORBIDDEN, &none, b"x"), CallError::Rejected { .. }));
        assert!(matches!(classify(StatusCode::SERVICE_UNAVAILABLE, &none, b""), CallError::Transient { .. }));

        let quota = body(
            429,
            "RESOURCE_EXHAUSTED",
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]),
        );
        match classify(StatusCode::TOO_MANY_REQUESTS, &none, &quota) {
            CallError::Transient { retry_after, reason } => {
                assert_eq!(retry_after, Some(Duration::from_millis(1500)));
                assert!(reason.contains("RESOURCE_EXHAUSTED"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        match classify(StatusCode::TOO_MANY_REQUESTS, &headers, &quota) {
            CallError::Transient { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_wait_asked_for_is_capped_not_a_panic() {
        let none = HeaderMap::new();
        let quota = |delay: &str| {
            serde_json::to_vec(&json!({"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}))
            .unwrap()
        };
        for delay in ["1e300s", "18446744073709551616s", "7200s"] {
            match classify(StatusCode::TOO_MANY_REQUESTS, &none, &quota(delay)) {
                CallError::Transient { retry_after, .. } => assert_eq!(retry_after, Some(RETRY_AFTER_MAX), "{delay}"),
                other => panic!("{delay}: {other:?}"),
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("18446744073709551615"));
        match classify(StatusCode::SERVICE_UNAVAILABLE, &headers, b"") {
            CallError::Transient { retry_after, .. } => assert_eq!(retry_after, Some(RETRY_AFTER_MAX)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
