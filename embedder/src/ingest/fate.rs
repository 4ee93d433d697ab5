//! What happens to a delivery: the one place the ingest loop decides between ack, retry after a
//! delay and dead letter. Every failure is a typed [`IngestError`] that answers this itself.

use std::time::Duration;

use common::bus::{BusError, Rejection};
use common::domain::MessageKey;
use common::store::StoreError;

use crate::metrics::Outcome;
use crate::write::WriteError;

/// Transient failures (store, bus) are retried after a delay that doubles with every delivery,
/// up to this cap, so an outage of many minutes does not exhaust a message's deliveries.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);

/// The delay before redelivering a message delivered `delivered` times: 1 s, 2 s, 4 s … 60 s.
pub(super) fn retry_delay(delivered: u64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX).min(6);
    Duration::from_secs(1u64 << exponent).min(RETRY_DELAY_MAX)
}

/// A delivery's fate.
#[derive(Debug, Clone)]
pub(super) enum Fate {
    /// Finished (stored, a duplicate, or dropped as deleted): ack it.
    Done(Outcome),
    /// Hand it back for redelivery after its backoff, or after this much if the provider asked
    /// for longer.
    Retry(Option<Duration>),
    /// It can never succeed: to the dead-letter stream with the reason.
    DeadLetter(Rejection),
}

/// Why a delivery, or the rest of a batch, did not finish.
#[derive(Debug, thiserror::Error)]
pub(super) enum IngestError {
    /// The event is not a valid message, or has used up its deliveries.
    #[error("{}: {}", .0.code, .0.reason)]
    Invalid(Rejection),
    /// The database refused this one row's data.
    #[error("the database refused the message")]
    Refused(#[source] StoreError),
    /// The insert committed but its row was not read back.
    #[error("stored row of {0} not found after insert")]
    Vanished(MessageKey),
    /// Postgres failed: the whole batch is tried again.
    #[error("{step} failed")]
    Store {
        step: &'static str,
        #[source]
        source: StoreError,
    },
    /// NATS failed: the whole batch is tried again.
    #[error("{step} failed")]
    Bus {
        step: &'static str,
        #[source]
        source: BusError,
    },
    /// The provider or the vector write failed: the whole batch is tried again, no sooner than
    /// the provider asked.
    #[error("embedding failed")]
    Embed(#[source] WriteError),
}

impl IngestError {
    pub(super) fn fate(&self) -> Fate {
        let reject = |code, reason: String| Fate::DeadLetter(Rejection { code, reason });
        match self {
            Self::Invalid(rejection) => Fate::DeadLetter(rejection.clone()),
            Self::Refused(e) => reject(
                "store_rejected",
                format!(
                    "the database refused the message: {}",
                    std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string)
                ),
            ),
            Self::Embed(WriteError::Provider(p)) => Fate::Retry(p.retry_after()),
            Self::Vanished(_) | Self::Store { .. } | Self::Bus { .. } | Self::Embed(WriteError::Store(_)) => {
                Fate::Retry(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::domain::{MessageId, TenantId};

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // The default twenty deliveries ride out 14 minutes of outage before a dead letter.
        assert!((1..20).map(|n| retry_delay(n).as_secs()).sum::<u64>() > 14 * 60);
    }

    #[test]
    fn row_refusals_dead_letter_and_outages_retry() {
        let refused = IngestError::Invalid(Rejection { code: "invalid_message", reason: "no".into() });
        assert!(matches!(refused.fate(), Fate::DeadLetter(r) if r.code == "invalid_message"));
        let outage = IngestError::Store { step: "storing messages", source: StoreError::SpaceInactive(1) };
        assert!(matches!(outage.fate(), Fate::Retry(None)));
        let key = MessageKey::new(TenantId::parse("t").unwrap(), MessageId(uuid::Uuid::nil()));
        let vanished = IngestError::Vanished(key);
        assert!(matches!(vanished.fate(), Fate::Retry(None)));
    }
}
