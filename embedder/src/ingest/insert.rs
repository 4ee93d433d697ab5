//! The store steps of a batch: inserting new rows (row by row when the database refuses one),
//! reading back re-embeds, and dropping the events of data deleted since they were accepted.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use common::contract::REEMBED_HEADER;
use common::domain::MessageKey;
use common::store::{Inserted, NewRow};
use tracing::{debug, warn};

use super::fate::{Fate, IngestError};
use super::parse::Accepted;
use super::{Halted, IngestWorker, Settled, origin};
use crate::metrics::Outcome;

impl IngestWorker {
    /// Inserts the batch's rows and reads back the rows of re-embeds (which only ever find a
    /// stored row: were the message deleted since, inserting would bring it back).
    pub(super) async fn insert(
        &self,
        accepted: Vec<Accepted>,
        settled: &mut Settled,
    ) -> Result<(Vec<Accepted>, HashMap<MessageKey, Inserted>), Halted> {
        let (reembeds, accepted): (Vec<Accepted>, Vec<Accepted>) =
            accepted.into_iter().partition(|a| a.delivery.message.header(REEMBED_HEADER).is_some());
        let (mut kept, mut stored) = match self.insert_new(accepted, settled).await {
            Ok(done) => done,
            // The new rows go back for redelivery: the re-embeds go with them.
            Err(mut halted) => {
                halted.deliveries.extend(reembeds);
                return Err(halted);
            }
        };
        let mut reembeds = reembeds.into_iter();
        while let Some(a) = reembeds.next() {
            match self.deps.store.get_message(&a.message.tenant_id, a.message.message_id).await {
                Ok(Some(row)) => {
                    stored.insert(row.key(), Inserted { row, new: false });
                    kept.push(a);
                }
                Ok(_) => {
                    debug!(message_id = %a.message.message_id, "dropping the re-embed of a deleted message");
                    settled.push((a.delivery, Fate::Done(Outcome::Dropped)));
                }
                Err(e) => {
                    let rest = kept.into_iter().chain(std::iter::once(a)).chain(reembeds).collect();
                    return Err(Halted::store(rest, "reading an edited message", e));
                }
            }
        }
        Ok((kept, stored))
    }

    /// Inserts the new rows. A row the database refuses (bad data) must not hold back the
    /// others: the batch is then inserted row by row and only the refused rows are dead-lettered.
    async fn insert_new(
        &self,
        accepted: Vec<Accepted>,
        settled: &mut Settled,
    ) -> Result<(Vec<Accepted>, HashMap<MessageKey, Inserted>), Halted> {
        let now = Utc::now();
        let row = |a: &Accepted| NewRow {
            message: a.message.clone(),
            importance: match a.importance {
                Some(kept) if !a.message.pinned && a.message.importance_override.is_none() => kept,
                _ => common::domain::importance::score(&a.message, now, self.importance),
            },
            origin: Some(origin(&a.delivery)),
        };
        let rows: Vec<NewRow> = accepted.iter().map(row).collect();
        let by_key =
            |inserted: Vec<Inserted>| inserted.into_iter().map(|r| (r.row.key(), r)).collect::<HashMap<_, _>>();
        match self.deps.store.insert_messages(&rows).await {
            Ok(inserted) => return Ok((accepted, by_key(inserted))),
            // One row: it is the one refused.
            Err(e) if e.is_data_error() && accepted.len() == 1 => {
                let fate = IngestError::Refused(e).fate();
                settled.extend(accepted.into_iter().map(|a| (a.delivery, fate.clone())));
                return Ok((Vec::new(), HashMap::new()));
            }
            Err(e) if e.is_data_error() => {
                warn!(error = %e, "the database refused a row; inserting the batch row by row");
            }
            Err(e) => return Err(Halted::store(accepted, "storing messages", e)),
        }
        let mut kept = Vec::with_capacity(accepted.len());
        let mut stored = HashMap::with_capacity(accepted.len());
        let mut pending = accepted.into_iter();
        while let Some(a) = pending.next() {
            match self.deps.store.insert_messages(&[row(&a)]).await {
                Ok(inserted) => {
                    stored.extend(by_key(inserted));
                    kept.push(a);
                }
                Err(e) if e.is_data_error() => settled.push((a.delivery, IngestError::Refused(e).fate())),
                Err(e) => {
                    let rest: Vec<Accepted> = kept.into_iter().chain(std::iter::once(a)).chain(pending).collect();
                    return Err(Halted::store(rest, "storing messages", e));
                }
            }
        }
        Ok((kept, stored))
    }

    /// Settles as dropped, without storing, the events a tombstone stopped (their message,
    /// conversation or tenant was deleted after they were accepted) and returns the rest.
    pub(super) async fn drop_deleted(
        &self,
        accepted: Vec<Accepted>,
        stored: &HashMap<MessageKey, Inserted>,
        settled: &mut Settled,
    ) -> Result<Vec<Accepted>, Halted> {
        let missing: Vec<NewRow> = accepted
            .iter()
            .filter(|a| !stored.contains_key(&a.message.key()))
            .map(|a| NewRow { message: a.message.clone(), importance: 0.0, origin: Some(origin(&a.delivery)) })
            .collect();
        if missing.is_empty() {
            return Ok(accepted);
        }
        let dropped: HashSet<MessageKey> = match self.deps.store.tombstoned(&missing).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(e) => return Err(Halted::store(accepted, "checking tombstones", e)),
        };
        let mut kept = Vec::with_capacity(accepted.len());
        for a in accepted {
            let key = a.message.key();
            if dropped.contains(&key) && !stored.contains_key(&key) {
                debug!(message_id = %a.message.message_id, "dropping an event of deleted data");
                settled.push((a.delivery, Fate::Done(Outcome::Dropped)));
            } else {
                kept.push(a);
            }
        }
        Ok(kept)
    }
}
