//! The searcher's metrics, registered under `memory_searcher_*`.

use std::fmt::Write as _;

use common::domain::SearchMode;
use common::metrics::{registered, seconds};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Search,
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    BadRequest,
    Unavailable,
    Busy,
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Search => "search",
            Self::Get => "get",
        })
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Ok => "ok",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::Busy => "busy",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Endpoint,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    /// The mode asked for: `vector`, `lexical` or `hybrid`.
    pub mode: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Time to answer a search that succeeded, by the mode asked for:
    /// `memory_searcher_search_duration_seconds`.
    pub search_duration: Family<ModeLabels, Histogram, fn() -> Histogram>,
    /// Requests answered: `memory_searcher_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer: `memory_searcher_request_duration_seconds`.
    pub duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    /// Hybrid searches answered by full-text search alone because query vectors were unavailable:
    /// `memory_searcher_degraded_searches_total`.
    pub degraded: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("searcher");
        Self {
            search_duration: seconds(
                r,
                "search_duration",
                "Time to answer a search that succeeded, by mode",
                Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            ),
            requests: registered(r, "requests", "Requests answered, by endpoint and outcome", Family::default()),
            duration: seconds(
                r,
                "request_duration",
                "Time to answer a request",
                Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            ),
            degraded: registered(
                r,
                "degraded_searches",
                "Hybrid searches answered by full-text search alone (query vectors unavailable)",
                Counter::default(),
            ),
        }
    }

    pub(crate) fn observe_search(&self, mode: SearchMode, took: std::time::Duration) {
        let mode = match mode {
            SearchMode::Vector => "vector",
            SearchMode::Lexical => "lexical",
            SearchMode::Hybrid => "hybrid",
        };
        self.search_duration.get_or_create(&ModeLabels { mode }).observe(took.as_secs_f64());
    }

    /// Counts and times one answered request.
    pub(crate) fn answered(&self, endpoint: Endpoint, a: &common::bus::respond::Answered) {
        use common::contract::RemoteErrorCode as Code;
        let outcome = match a.error {
            None => Outcome::Ok,
            Some(Code::BadRequest) => Outcome::BadRequest,
            Some(Code::Busy) => Outcome::Busy,
            Some(_) => Outcome::Unavailable,
        };
        tracing::debug!(?outcome, took = ?a.took, "answered");
        self.requests.get_or_create(&RequestLabels { endpoint, outcome }).inc();
        self.duration.get_or_create(&EndpointLabels { endpoint }).observe(a.took.as_secs_f64());
    }
}
