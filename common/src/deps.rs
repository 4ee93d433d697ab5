//! The handles a worker is built from. Only composition roots (`main`, tests) connect.

use std::sync::Arc;

use crate::bus::{Bus, BusError, NatsBus};
use crate::config::{Config, ConfigError};
use crate::contract::Subjects;
use crate::store::{PgStore, Store, StoreError};

#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to Postgres")]
    Store(#[from] StoreError),
    #[error("cannot connect to NATS")]
    Bus(#[from] BusError),
}

impl Deps {
    /// Connects to Postgres (applying migrations) and NATS (creating streams).
    pub async fn connect(config: &Config) -> Result<Self, ConnectError> {
        let subjects = Subjects::new(config.nats.subject_prefix.clone());
        let store = PgStore::connect(config.database_url()?, config.database.max_connections).await?;
        let bus = NatsBus::connect(&config.nats, subjects.clone()).await?;
        Ok(Self { store: Arc::new(store), bus: Arc::new(bus), subjects })
    }

    /// `Ok` when both the store and the bus answer; else which one did not.
    pub async fn ready(&self) -> Result<(), String> {
        let (store, bus) = tokio::join!(self.store.ping(), self.bus.ping());
        let mut down = Vec::new();
        if let Err(e) = store {
            down.push(format!("postgres: {e}"));
        }
        if let Err(e) = bus {
            down.push(format!("nats: {e}"));
        }
        if down.is_empty() { Ok(()) } else { Err(down.join("; ")) }
    }
}
