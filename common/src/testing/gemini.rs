//! A fake Gemini API (wiremock) that plays `models/{model}:batchEmbedContents` as documented:
//! the same request checks (key, at most 100 requests, each request's `model` equal to the URL's,
//! camelCase or snake_case fields), the same response and error bodies, and vectors that are
//! deterministic, of the requested dimensionality and not unit length (as the real API's below
//! 3072 dimensions). Tests script faults: statuses, rate limits, delays, wrong dimensions, and
//! texts it refuses.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const KEY: &str = "fake-gemini-key";
pub const MODEL: &str = "gemini-embedding-001";

/// A fault the fake answers one call with, instead of embeddings.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status with a Google error body (`500 INTERNAL`, `503 UNAVAILABLE`, `403 PERMISSION_DENIED`…).
    Status(u16),
    /// 429 `RESOURCE_EXHAUSTED`, with a `Retry-After` header in seconds and/or a `RetryInfo` delay.
    RateLimited { retry_after_secs: Option<u64>, retry_info: Option<&'static str> },
    /// Answers correctly, but only after this long.
    Delay(Duration),
    /// Answers with vectors one dimension short.
    WrongDimension,
    /// Answers 200 with a body that is not the API's: cut-off JSON, as a proxy or a dropped
    /// connection might leave it.
    Malformed,
}

/// One call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub texts: Vec<String>,
    /// The request body as sent.
    pub body: Value,
    /// The `x-goog-api-key` header.
    pub key: Option<String>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Fault>,
    /// Every call gets this fault while set.
    always: Option<Fault>,
    /// Texts containing this are refused with 400 INVALID_ARGUMENT (the whole batch, as the API does).
    poison: Option<String>,
    calls: Vec<Call>,
}

pub struct FakeGemini {
    server: MockServer,
    state: Arc<Mutex<State>>,
}

impl FakeGemini {
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::default()));
        Mock::given(method("POST"))
            .and(path_regex(r"^/v1beta/models/[^/:]+:batchEmbedContents$"))
            .respond_with(Responder { state: state.clone() })
            .mount(&server)
            .await;
        Self { server, state }
    }

    /// The value for `MEMORY_GEMINI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}/v1beta", self.server.uri())
    }

    /// The variables that point an embedder at this fake.
    pub fn vars(&self) -> [(String, String); 3] {
        [
            ("MEMORY_EMBEDDING_PROVIDER".into(), "gemini".into()),
            ("MEMORY_GEMINI_BASE_URL".into(), self.base_url()),
            ("MEMORY_GEMINI_API_KEY".into(), KEY.into()),
        ]
    }

    /// Answers the next calls with these faults, in order, then normally again.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().expect("fake lock").script.extend(faults);
    }

    /// Answers every call with `fault` until set back to `None`.
    pub fn always(&self, fault: Option<Fault>) {
        self.state.lock().expect("fake lock").always = fault;
    }

    /// Refuses any batch holding a text that contains `marker` (`None`: refuse nothing).
    pub fn poison(&self, marker: Option<&str>) {
        self.state.lock().expect("fake lock").poison = marker.map(str::to_owned);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("fake lock").calls.clone()
    }

    /// The vector the fake gives `text` at `dimensions`, before the client normalises it.
    pub fn raw_vector(text: &str, dimensions: usize) -> Vec<f32> {
        // Every lower-cased word adds a pseudo-random direction, so texts sharing words are close.
        let mut v = vec![0f32; dimensions];
        for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let mut h =
                word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            for x in &mut v {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                *x += ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            }
        }
        // Not unit length, as the real API's truncated vectors.
        v.iter_mut().for_each(|x| *x *= 3.0);
        if v.iter().all(|x| *x == 0.0) {
            v[0] = 1.0;
        }
        v
    }
}

fn error(code: u16, status: &str, message: &str, details: Value) -> ResponseTemplate {
    ResponseTemplate::new(code)
        .set_body_json(json!({"error": {"code": code, "message": message, "status": status, "details": details}}))
}

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

struct Responder {
    state: Arc<Mutex<State>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let key = request
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.url.query_pairs().find(|(k, _)| k == "key").map(|(_, v)| v.into_owned()));
        let requests = body["requests"].as_array().cloned().unwrap_or_default();
        let texts: Vec<String> =
            requests.iter().map(|r| r["content"]["parts"][0]["text"].as_str().unwrap_or_default().to_owned()).collect();
        let mut state = self.state.lock().expect("fake lock");
        state.calls.push(Call { at: Instant::now(), texts: texts.clone(), body: body.clone(), key: key.clone() });

        if key.as_deref() != Some(KEY) {
            return error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]),
            );
        }
        let fault = state.always.clone().or_else(|| state.script.pop_front());
        let poisoned = state.poison.as_ref().is_some_and(|p| texts.iter().any(|t| t.contains(p.as_str())));
        drop(state);

        let mut delay = None;
        let mut short = 0;
        match fault {
            Some(Fault::Status(code)) => return error(code, status_name(code), "fake failure", json!([])),
            Some(Fault::RateLimited { retry_after_secs, retry_info }) => {
                let details = retry_info.map_or_else(
                    || json!([]),
                    |d| json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}]),
                );
                let mut response = error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details.",
                    details,
                );
                if let Some(secs) = retry_after_secs {
                    response = response.insert_header("retry-after", secs.to_string().as_str());
                }
                return response;
            }
            Some(Fault::Delay(d)) => delay = Some(d),
            Some(Fault::WrongDimension) => short = 1,
            Some(Fault::Malformed) => {
                return ResponseTemplate::new(200)
                    .insert_header("content-type", "application/json")
                    .set_body_string(r#"{"embeddings": [{"values": [0.12, -0.3"#);
            }
            None => {}
        }

        let url_model = request
            .url
            .path()
            .rsplit('/')
            .next()
            .and_then(|last| last.strip_suffix(":batchEmbedContents"))
            .map(|m| format!("models/{m}"))
            .unwrap_or_default();
        if requests.is_empty() {
            return error(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: is required\n", json!([]));
        }
        if requests.len() > 100 {
            return error(
                400,
                "INVALID_ARGUMENT",
                "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
                json!([]),
            );
        }
        let mut embeddings = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if r["model"].as_str() != Some(url_model.as_str()) {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    &format!("* BatchEmbedContentsRequest.requests[{i}].model: model must match the request model"),
                    json!([]),
                );
            }
            let dims = r
                .get("outputDimensionality")
                .or_else(|| r.get("output_dimensionality"))
                .and_then(Value::as_u64)
                .unwrap_or(3072) as usize;
            embeddings.push(json!({"values": FakeGemini::raw_vector(&texts[i], dims - short)}));
        }
        if poisoned {
            return error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", json!([]));
        }
        let response = ResponseTemplate::new(200).set_body_json(json!({"embeddings": embeddings}));
        match delay {
            Some(d) => response.set_delay(d),
            None => response,
        }
    }
}
