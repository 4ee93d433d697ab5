//! The handles a worker is built from. Only composition roots (`main`, tests) connect; they
//! hold the whole [`PgStore`], and each worker takes its own view of it ([`Deps::view`]), which
//! names only the storage roles it uses.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tracing::warn;

use crate::bus::{Bus, BusError, NatsBus};
use crate::config::{Config, ConfigError};
use crate::contract::Subjects;
use crate::store::{Health, PgStore, StoreError};

/// The store (`S`: the whole store at a composition root, a role's view in a worker), the bus
/// and the subject names.
pub struct Deps<S: ?Sized = PgStore> {
    pub store: Arc<S>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
}

impl<S: ?Sized> Clone for Deps<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), bus: self.bus.clone(), subjects: self.subjects.clone() }
    }
}

impl<S: ?Sized> Deps<S> {
    /// The same handles with the store seen through `narrow` (a worker's own storage trait).
    pub fn view<T: ?Sized>(self, narrow: impl FnOnce(Arc<S>) -> Arc<T>) -> Deps<T> {
        Deps { store: narrow(self.store), bus: self.bus, subjects: self.subjects }
    }
}

impl<S: Health + ?Sized> Deps<S> {
    /// `Ok` when both the store and the bus answer; else which did not.
    pub async fn ready(&self) -> Result<(), Unready> {
        let (store, bus) = tokio::join!(self.store.ping(), self.bus.ping());
        match (store.err(), bus.err()) {
            (None, None) => Ok(()),
            (postgres, nats) => Err(Unready { postgres, nats }),
        }
    }
}

/// Which dependency did not answer, and how.
#[derive(Debug)]
pub struct Unready {
    pub postgres: Option<StoreError>,
    pub nats: Option<BusError>,
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let postgres = self.postgres.as_ref().map(|e| format!("postgres: {e}"));
        let nats = self.nats.as_ref().map(|e| format!("nats: {e}"));
        f.write_str(&postgres.into_iter().chain(nats).collect::<Vec<_>>().join("; "))
    }
}

impl std::error::Error for Unready {}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the configuration is not usable")]
    Config(#[from] ConfigError),
    #[error("cannot use Postgres")]
    Store(#[from] StoreError),
    #[error("cannot connect to NATS")]
    Bus(#[from] BusError),
}

impl Deps {
    /// Connects to Postgres and NATS (creating streams). Applies pending migrations, or with
    /// `MEMORY_DATABASE_MIGRATE=false` waits for the schema to be current. While either is
    /// unreachable (still starting, say) it retries with backoff for `MEMORY_STARTUP_TIMEOUT_SECS`.
    pub async fn connect(config: &Config) -> Result<Self, ConnectError> {
        Ok(Self::connect_pg(config).await?.0)
    }

    /// [`Self::connect`], also returning the Postgres store itself (for its pool's metrics).
    pub async fn connect_pg(config: &Config) -> Result<(Self, PgStore), ConnectError> {
        let subjects = Subjects::new(config.nats.subject_prefix.clone());
        let store = Self::postgres(config).await?;
        let bus = (|| NatsBus::connect(&config.nats, subjects.clone()))
            .retry(Self::startup_backoff(config))
            .when(BusError::is_unreachable)
            .notify(|e, next| warn!(error = %e, cause = ?std::error::Error::source(e), retry_in = ?next, "NATS is unreachable"))
            .await?;
        Ok((Self { store: Arc::new(store.clone()), bus: Arc::new(bus), subjects }, store))
    }

    /// Connects to Postgres alone, migrating or waiting for the schema as configured.
    pub async fn postgres(config: &Config) -> Result<PgStore, ConnectError> {
        let url = config.database_url()?;
        let settings = &config.database;
        let store = (|| async move {
            let store = PgStore::connect_only(url, settings).await?;
            if settings.migrate {
                store.migrate().await?;
            } else {
                store.check_schema().await?;
            }
            Ok::<_, StoreError>(store)
        })
        .retry(Self::startup_backoff(config))
        .when(StoreError::is_unreachable)
        .notify(|e, next| warn!(error = %e, cause = ?std::error::Error::source(e), retry_in = ?next, "Postgres is not ready"))
        .await?;
        Ok(store)
    }

    fn startup_backoff(config: &Config) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_total_delay(Some(config.startup_timeout))
            .without_max_times()
    }
}
