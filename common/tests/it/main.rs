//! The Postgres store and the NATS bus against the real servers.

mod bus;
mod hnsw;
mod nats_permissions;
mod store;
