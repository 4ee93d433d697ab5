//! Cross-service tests: the gateway, embedder and searcher against real NATS and Postgres.

mod analytics;
mod compat;
mod connections;
mod conversations;
mod deletes;
mod embeddings;
mod fuzz;
mod harness;
mod ingest;
mod isolation;
mod lifecycle;
mod limits;
mod live;
mod nats;
mod operations;
mod ratelimit;
mod relevance;
mod search;
mod tenancy;
mod transfer;
