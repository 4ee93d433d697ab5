//! The advisory-lock keys workers coordinate with.

use crate::domain::TenantId;

/// One backfill of a space at a time.
pub fn backfill(space_id: i32) -> i64 {
    0x006d_656d_0002_0000_i64 | i64::from(space_id)
}
/// One sweeper at a time.
pub const SWEEPER: i64 = 0x006d_656d_0003;

/// Ingest writes of a tenant take this shared, deletes take it exclusively (both for the
/// length of a transaction), so a delete and an insert of the same tenant never interleave:
/// the insert either commits first (and the delete removes its row) or sees the tombstone.
pub fn tenant_writes(tenant: &TenantId) -> i64 {
    (0x6d05_i64 << 48) | (retention(tenant) & 0xFFFF_FFFF_FFFF)
}

/// One retention run per tenant at a time.
pub fn retention(tenant: &TenantId) -> i64 {
    // FNV-1a of the id, in a range of its own.
    let h =
        tenant.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (0x6d04_i64 << 48) | i64::try_from(h & 0xFFFF_FFFF_FFFF).unwrap_or(0)
}
