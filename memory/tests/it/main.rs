//! The `memory` binary against real NATS, Postgres and Redis: each role as its own process, and
//! `memory all`.

mod all;
mod durability;
mod faults;
mod roles;
mod servers;

/// The binary under test.
const MEMORY: &str = env!("CARGO_BIN_EXE_memory");
