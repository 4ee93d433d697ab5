//! What search reads: nearest neighbours and full-text candidates within one tenant.

use async_trait::async_trait;

use super::{Space, StoreError, StoredMessage};
use crate::domain::{SearchFilters, TenantId};

/// A nearest-neighbour query within one tenant.
#[derive(Debug, Clone)]
pub struct VectorQuery<'a> {
    pub tenant_id: &'a TenantId,
    pub vector: &'a [f32],
    pub limit: u32,
    pub filters: &'a SearchFilters,
    /// HNSW's candidate list size (`hnsw.ef_search`) for this query alone; `None`: the store's
    /// own (`DatabaseConfig::ef_search`), which costs no extra round trips.
    pub ef_search: Option<u32>,
    /// Compare the query with every vector of the tenant, not through the index: the truth an
    /// approximate search's recall is measured against. Costs a scan of the tenant's vectors.
    pub exact: bool,
}

/// A candidate with its cosine similarity to the query.
#[derive(Debug, Clone)]
pub struct VectorHit {
    pub message: StoredMessage,
    pub similarity: f64,
}

/// A full-text query within one tenant.
#[derive(Debug, Clone)]
pub struct LexicalQuery<'a> {
    pub tenant_id: &'a TenantId,
    pub query: &'a TextQuery,
    pub limit: u32,
    pub filters: &'a SearchFilters,
    /// Given a space and a query vector of it, each hit that has a vector there gets its cosine
    /// similarity too (hybrid search reads both in one statement).
    pub similarity_to: Option<(&'a Space, &'a [f32])>,
}

/// The text a lexical search looks for.
#[derive(Debug, Clone, PartialEq)]
pub enum TextQuery {
    /// Web-search syntax as typed (`"a phrase"`, `or`, `-word`): `websearch_to_tsquery`, ranked
    /// by `ts_rank_cd`.
    Websearch(String),
    /// Any of these words (lexemes of the `simple` configuration); a message ranks by the sum of
    /// the weights of the words it contains.
    AnyOf(Vec<Term>),
    /// One word in too many messages to score each: its matches all rank the same (its weight),
    /// so the newest are the best, and they are read newest first without looking at the rest.
    Newest(Term),
}

/// A query word and how much finding it counts (its inverse document frequency).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub lexeme: String,
    pub weight: f64,
}

/// A candidate with its full-text rank, and its similarity when the query asked for it.
#[derive(Debug, Clone)]
pub struct LexicalHit {
    pub message: StoredMessage,
    pub rank: f64,
    pub similarity: Option<f64>,
}

/// The searcher's reads.
#[async_trait]
pub trait SearchReads: Send + Sync {
    /// The tenant's nearest messages to the query vector by cosine distance, filtered.
    async fn search_vectors(&self, space: &Space, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, StoreError>;

    /// The tenant's messages matching the text, best full-text rank first, filtered.
    async fn search_lexical(&self, query: LexicalQuery<'_>) -> Result<Vec<LexicalHit>, StoreError>;

    /// The distinct words of `text` as the full-text index stores them (`simple` configuration).
    async fn lexemes(&self, text: &str) -> Result<Vec<String>, StoreError>;

    /// How many messages the tenant has.
    async fn tenant_size(&self, tenant: &TenantId) -> Result<i64, StoreError>;

    /// How many of the tenant's messages contain each lexeme, counting no further than `cap`.
    async fn document_frequencies(
        &self,
        tenant: &TenantId,
        lexemes: &[String],
        cap: i64,
    ) -> Result<Vec<i64>, StoreError>;
}
