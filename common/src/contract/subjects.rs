//! Every name on the bus and in Redis, from one prefix: subjects, streams, consumers, queue
//! groups and cache keys.

use crate::domain::{MessageId, TenantId};

use super::EventKind;

/// Builds every subject, stream and consumer name from one prefix: `mem` in production, a unique
/// prefix per test so parallel tests never share a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// Which stream a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Ingest,
    Events,
    Dead,
}

impl Subjects {
    /// `prefix` must be one NATS token of `[A-Za-z0-9_-]` (checked by config).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A tenant id as one subject token: tenant ids may contain `.`, which NATS reads as a token
    /// separator, so it is written as `~` (never valid in a tenant id).
    pub fn tenant_token(tenant: &TenantId) -> String {
        tenant.as_str().replace('.', "~")
    }

    /// Where a message for `tenant` is published: `mem.v1.ingest.<tenant>.<message_id>`.
    /// Direct publishers may also use `mem.v1.ingest.<tenant>`.
    pub fn ingest(&self, tenant: &TenantId, id: MessageId) -> String {
        format!("{}.v1.ingest.{}.{id}", self.prefix, Self::tenant_token(tenant))
    }
    /// Every subject a tenant's data may sit on in each stream, for erasing it: ingest with and
    /// without a message id, events, dead letters.
    pub fn tenant_subjects(&self, tenant: &TenantId) -> [(StreamKind, String); 4] {
        let (p, t) = (&self.prefix, Self::tenant_token(tenant));
        [
            (StreamKind::Ingest, format!("{p}.v1.ingest.{t}")),
            (StreamKind::Ingest, format!("{p}.v1.ingest.{t}.>")),
            (StreamKind::Events, format!("{p}.v1.events.{t}.>")),
            (StreamKind::Dead, format!("{p}.v1.dead.{t}")),
        ]
    }
    /// Every ingest subject, for the stream and the embedder's consumer.
    pub fn ingest_all(&self) -> String {
        format!("{}.v1.ingest.>", self.prefix)
    }
    /// Reads `(tenant token, optional message id token)` from an ingest subject. The tenant token
    /// is still encoded (see [`Subjects::tenant_token`]); [`Subjects::tenant_of`] decodes it.
    pub fn parse_ingest<'a>(&self, subject: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".v1.ingest.")?;
        let mut tokens = rest.split('.');
        let tenant = tokens.next().filter(|t| !t.is_empty())?;
        let id = tokens.next();
        if tokens.next().is_some() {
            return None;
        }
        Some((tenant, id))
    }

    /// The tenant id a subject token stands for.
    pub fn tenant_of(token: &str) -> String {
        token.replace('~', ".")
    }

    /// `mem.v1.events.<tenant>.<event>.<message_id>`: the id token lets a client wait for one
    /// message's event with an exact subscription, filtered by the server.
    pub fn event(&self, tenant: &TenantId, event: EventKind, id: MessageId) -> String {
        format!("{}.v1.events.{}.{}.{id}", self.prefix, Self::tenant_token(tenant), event.as_str())
    }
    /// Every event about one message: `mem.v1.events.<tenant>.*.<id>`.
    pub fn events_of(&self, tenant: &TenantId, id: MessageId) -> String {
        format!("{}.v1.events.{}.*.{id}", self.prefix, Self::tenant_token(tenant))
    }
    /// A tenant's events: every kind (`mem.v1.events.<tenant>.>`), or one
    /// (`mem.v1.events.<tenant>.<event>.*`).
    pub fn tenant_events(&self, tenant: &TenantId, kind: Option<EventKind>) -> String {
        let token = Self::tenant_token(tenant);
        match kind {
            None => format!("{}.v1.events.{token}.>", self.prefix),
            Some(kind) => format!("{}.v1.events.{token}.{}.*", self.prefix, kind.as_str()),
        }
    }
    pub fn events_all(&self) -> String {
        format!("{}.v1.events.>", self.prefix)
    }

    /// `mem.v1.dead.<tenant>`; the tenant token is whatever the rejected subject carried.
    pub fn dead(&self, tenant_token: &str) -> String {
        format!("{}.v1.dead.{tenant_token}", self.prefix)
    }
    pub fn dead_all(&self) -> String {
        format!("{}.v1.dead.>", self.prefix)
    }
    /// The dead-letter subject for a rejected ingest subject.
    pub fn dead_for(&self, ingest_subject: &str) -> String {
        let tenant = self.parse_ingest(ingest_subject).map_or("_unknown", |(t, _)| t);
        self.dead(tenant)
    }

    pub fn search(&self) -> String {
        format!("{}.v1.search", self.prefix)
    }
    pub fn get_message(&self) -> String {
        format!("{}.v1.messages.get", self.prefix)
    }
    /// `mem.v1.embed.query.<space id>`: query vectors in one embedding space, answered by the
    /// embedders of that space. Searchers ask the active space's.
    pub fn embed_query(&self, space_id: i32) -> String {
        format!("{}.v1.embed.query.{space_id}", self.prefix)
    }

    /// `MEMORY_INGEST` for the production prefix `mem`, `<PREFIX>_INGEST` otherwise.
    pub fn stream(&self, kind: StreamKind) -> String {
        let base =
            if self.prefix == "mem" { "MEMORY".to_owned() } else { self.prefix.to_uppercase().replace('-', "_") };
        let suffix = match kind {
            StreamKind::Ingest => "INGEST",
            StreamKind::Events => "EVENTS",
            StreamKind::Dead => "DEAD",
        };
        format!("{base}_{suffix}")
    }
    /// Durable consumer name of the embedder on the ingest stream.
    pub fn embedder_consumer(&self) -> &'static str {
        "embedder"
    }
    /// Queue groups: every replica of a service joins the same one.
    /// `mem.v1.retention.run`: a retention run, answered by the retention service.
    pub fn retention_run(&self) -> String {
        format!("{}.v1.retention.run", self.prefix)
    }
    /// `mem.v1.messages.archive` and `mem.v1.messages.restore`: one message, answered by retention.
    pub fn archive_message(&self) -> String {
        format!("{}.v1.messages.archive", self.prefix)
    }
    pub fn restore_message(&self) -> String {
        format!("{}.v1.messages.restore", self.prefix)
    }
    /// `mem.v1.retention.policy`: read or change a tenant's retention policy.
    pub fn retention_policy(&self) -> String {
        format!("{}.v1.retention.policy", self.prefix)
    }
    /// `mem.v1.messages.update` and `mem.v1.messages.delete`: edits and deletes, by id.
    pub fn update_messages(&self) -> String {
        format!("{}.v1.messages.update", self.prefix)
    }
    pub fn delete_messages(&self) -> String {
        format!("{}.v1.messages.delete", self.prefix)
    }
    /// `mem.v1.conversations.delete`: every message of one conversation.
    pub fn delete_conversation(&self) -> String {
        format!("{}.v1.conversations.delete", self.prefix)
    }
    /// `mem.v1.tenants.erase`: every message, vector and cache entry of a tenant.
    pub fn erase_tenant(&self) -> String {
        format!("{}.v1.tenants.erase", self.prefix)
    }
    /// `mem.v1.tenants.export`: one page of a tenant's messages.
    pub fn export_tenant(&self) -> String {
        format!("{}.v1.tenants.export", self.prefix)
    }
    /// `mem.v1.cache.purge`: a broadcast (no queue group) telling every embedder to drop a
    /// tenant's cached query vectors.
    pub fn cache_purge(&self) -> String {
        format!("{}.v1.cache.purge", self.prefix)
    }
    /// `mem.v1.keys.revoked`: a broadcast (core NATS) of a revoked key's id, so every gateway
    /// drops it from its cache at once, not when the cache entry expires.
    pub fn keys_revoked(&self) -> String {
        format!("{}.v1.keys.revoked", self.prefix)
    }
    pub fn retention_group(&self) -> &'static str {
        "retention"
    }
    pub fn searcher_group(&self) -> &'static str {
        "searcher"
    }
    pub fn embedder_group(&self) -> &'static str {
        "embedder"
    }

    /// The Redis key of a cached query vector: `<prefix>:query-vector:<tenant>:<hash>` (`_` for
    /// no tenant; tenant ids hold no glob characters). Shared by the embedders that fill the
    /// cache and the retention service that erases a tenant's entries.
    pub fn query_cache_key(&self, tenant: Option<&TenantId>, hash_hex: &str) -> String {
        format!("{}:query-vector:{}:{hash_hex}", self.prefix, tenant.map_or("_", TenantId::as_str))
    }

    /// The `SCAN MATCH` pattern of every cached query vector of a tenant.
    pub fn query_cache_pattern(&self, tenant: &TenantId) -> String {
        self.query_cache_key(Some(tenant), "*")
    }

    /// The Redis key of a client's (an API key's) rate-limit state.
    pub fn rate_limit_client(&self, client: &str) -> String {
        format!("{}:rate:client:{client}", self.prefix)
    }

    /// The Redis key of a tenant's rate-limit state, over all its keys.
    pub fn rate_limit_tenant(&self, tenant: &TenantId) -> String {
        format!("{}:rate:tenant:{tenant}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let s = Subjects::new("mem");
        let tenant = TenantId::parse("acme").unwrap();
        let id = MessageId::new();
        assert_eq!(s.event(&tenant, EventKind::Stored, id), format!("mem.v1.events.acme.stored.{id}"));
        assert_eq!(s.stream(StreamKind::Ingest), "MEMORY_INGEST");
        assert_eq!(Subjects::new("t-1a").stream(StreamKind::Dead), "T_1A_DEAD");
    }

    #[test]
    fn ingest_subjects_parse_back() {
        let s = Subjects::new("mem");
        let tenant = TenantId::parse("acme.eu").unwrap();
        let id = MessageId::new();
        let subject = s.ingest(&tenant, id);
        assert_eq!(subject, format!("mem.v1.ingest.acme~eu.{id}"));
        assert_eq!(s.parse_ingest(&subject), Some(("acme~eu", Some(id.to_string().as_str()))));
        assert_eq!(Subjects::tenant_of("acme~eu"), "acme.eu");
        assert_eq!(s.parse_ingest("mem.v1.ingest.acme"), Some(("acme", None)));
        assert_eq!(s.parse_ingest(&format!("mem.v1.ingest.acme.{id}")), Some(("acme", Some(id.to_string().as_str()))));
        assert_eq!(s.parse_ingest("mem.v1.ingest.a.b.c"), None);
        assert_eq!(s.parse_ingest("other.v1.ingest.acme"), None);
        assert_eq!(s.dead_for("mem.v1.ingest.acme"), "mem.v1.dead.acme");
    }
}
