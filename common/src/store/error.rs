//! What a storage call can fail with, and which failures are worth retrying.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("vector has {got} dimensions, space {space} has {expected}")]
    Dimensions { space: i32, expected: u32, got: usize },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The space is not the active one (any more): its vectors are not written as current.
    #[error("embedding space {0} is not active")]
    SpaceInactive(i32),
    /// A row with this key exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The database's schema is older than this build's (migrations are not applied yet).
    #[error("the database schema is at migration {applied}, this build needs {expected}: run `memory migrate`")]
    SchemaBehind { applied: i64, expected: i64 },
    /// The database's schema is newer than this build knows: a newer release migrated it.
    #[error("the database schema is at migration {applied}, newer than this build's {expected}")]
    SchemaAhead { applied: i64, expected: i64 },
}

impl StoreError {
    /// Whether the database refused the data itself (SQLSTATE class 22 or 23): retrying the same
    /// row cannot succeed.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
            }
            _ => false,
        }
    }

    /// Whether the database gave up on a transaction to break a deadlock or a serialization
    /// conflict (SQLSTATE 40P01, 40001): running it again may succeed.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("40P01" | "40001")),
            _ => false,
        }
    }

    /// Whether Postgres cancelled the statement for running past its `statement_timeout`
    /// (SQLSTATE 57014).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("57014"),
            _ => false,
        }
    }

    /// Whether the database was unreachable or not ready yet, so trying again may succeed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => true,
            // 57P03: the database system is starting up.
            Self::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("57P03"),
            // Not migrated yet: `memory migrate` (a Job, say) is probably running.
            Self::SchemaBehind { .. } => true,
            _ => false,
        }
    }
}
