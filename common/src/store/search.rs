//! What search reads: nearest neighbours and full-text candidates within one tenant.

use async_trait::async_trait;

use super::{Space, StoreError, StoredMessage};
use crate::domain::{MessageId, SearchFilters, TenantId};

/// A nearest-neighbour query within one tenant.
#[derive(Debug, Clone)]
pub struct VectorQuery<'a> {
    pub tenant_id: &'a TenantId,
    pub vector: &'a [f32],
    pub limit: u32,
    pub filters: &'a SearchFilters,
    /// HNSW's candidate list size (`hnsw.ef_search`).
    pub ef_search: u32,
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
}

/// A query word and how much finding it counts (its inverse document frequency).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub lexeme: String,
    pub weight: f64,
}

/// A candidate with its full-text rank (`ts_rank_cd`).
#[derive(Debug, Clone)]
pub struct LexicalHit {
    pub message: StoredMessage,
    pub rank: f64,
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

    /// How many of the tenant's messages there are, and how many contain each lexeme, counting
    /// no further than `cap`.
    async fn document_frequencies(
        &self,
        tenant: &TenantId,
        lexemes: &[String],
        cap: i64,
    ) -> Result<(i64, Vec<i64>), StoreError>;

    /// Cosine similarity of `vector` to each of these messages of the tenant that has a vector
    /// in `space`.
    async fn similarities(
        &self,
        space: &Space,
        tenant: &TenantId,
        ids: &[MessageId],
        vector: &[f32],
    ) -> Result<Vec<(MessageId, f64)>, StoreError>;
}
