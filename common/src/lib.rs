//! What two or more memory workers share: domain types and validation, configuration, the
//! event and request contract, storage, the bus, and process plumbing (logs, shutdown, ops).

pub mod bus;
pub mod config;
pub mod contract;
pub mod deps;
pub mod domain;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use deps::Deps;
