//! The embedder against real NATS, Postgres and Redis; Gemini is the only fake (wiremock).

mod backfill;
mod gemini;
mod local;
mod poison;
mod query;
mod support;
mod sweeper;
