//! The searcher's reads: nearest neighbours and full-text candidates.

use async_trait::async_trait;
use pgvector::Vector;
use sqlx::AssertSqlSafe;

use super::PgStore;
use super::rows::{HitRow, LexicalRow};
use super::vectors::check_dimensions;
use crate::domain::TenantId;
use crate::store::{
    LexicalHit, LexicalQuery, SearchReads, Space, StoreError, StoredMessage, TextQuery, VectorHit, VectorQuery,
};

/// How a vector search reads the tenant's vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The tenant's nearest vectors alone (the HNSW index for a large tenant, a sort of its own
    /// rows for a small one), a few more than asked for, then their messages: for searches that
    /// no filter narrows. A small tenant's rows are sorted without reading its messages.
    Nearest,
    /// Vectors and messages joined, filtered, then ordered: the planner finds the narrow side.
    Joined,
    /// Every vector of the tenant compared, never the index.
    Exact,
}

/// `Shape::Nearest` reads this many vectors per result (archived messages drop out after).
const NEAREST_SLACK: u32 = 2;

impl Shape {
    fn of(query: &VectorQuery<'_>) -> Self {
        if query.exact {
            Self::Exact
        } else if query.filters.narrows() {
            Self::Joined
        } else {
            Self::Nearest
        }
    }

    /// How many vectors `Nearest` reads for `query` ($11).
    fn nearest(query: &VectorQuery<'_>) -> u32 {
        if query.filters.include_archived { query.limit } else { query.limit.saturating_mul(NEAREST_SLACK) }
    }
}

/// Binds a vector search's parameters ($1 to $10, and $11 for `Shape::Nearest`) to a statement
/// of [`PgStore::vector_search_sql`], whatever its rows (`query_as`, or `query_scalar` for EXPLAIN).
macro_rules! bind_vector_search {
    ($statement:expr, $query:expr, $shape:expr) => {{
        let statement = bind_filters!(
            $statement.bind(Vector::from($query.vector.to_vec())).bind($query.tenant_id.as_str()),
            $query.filters
        )
        .bind(i64::from($query.limit));
        if $shape == Shape::Nearest { statement.bind(i64::from(Shape::nearest($query))) } else { statement }
    }};
}

impl PgStore {
    /// The nearest-neighbour statement; `prefix` goes before it (`EXPLAIN`, say). $1 the query
    /// vector, $2 the tenant, $3 to $9 the filters, $10 the limit, $11 `Shape::nearest`.
    fn vector_search_sql(space: &Space, shape: Shape, prefix: &str) -> String {
        let table = Self::vector_table(space);
        let (columns, filters) = (message_columns!(), filters!());
        match shape {
            Shape::Nearest => format!(
                "{prefix} WITH near AS MATERIALIZED (
                     SELECT v.message_id, v.embedding <=> $1::halfvec AS distance FROM {table} v
                     WHERE v.tenant_id = $2 ORDER BY v.embedding <=> $1::halfvec LIMIT $11
                 )
                 SELECT {columns}, 1 - n.distance AS similarity, (SELECT count(*) FROM near) AS nearest
                 FROM near n JOIN messages m ON m.tenant_id = $2 AND m.id = n.message_id
                 WHERE {filters}
                 ORDER BY n.distance
                 LIMIT $10"
            ),
            Shape::Joined => format!(
                "{prefix} SELECT {columns}, 1 - (v.embedding <=> $1::halfvec) AS similarity
                 FROM {table} v JOIN messages m ON m.tenant_id = v.tenant_id AND m.id = v.message_id
                 WHERE v.tenant_id = $2 AND {filters}
                 ORDER BY v.embedding <=> $1::halfvec
                 LIMIT $10"
            ),
            // OFFSET 0 keeps the distances a subquery of their own, which no index can order.
            Shape::Exact => format!(
                "{prefix} SELECT {columns}, 1 - n.distance AS similarity
                 FROM (SELECT v.message_id, v.embedding <=> $1::halfvec AS distance FROM {table} v
                       WHERE v.tenant_id = $2 OFFSET 0) n
                 JOIN messages m ON m.tenant_id = $2 AND m.id = n.message_id
                 WHERE {filters}
                 ORDER BY n.distance
                 LIMIT $10"
            ),
        }
    }

    /// A read-only transaction for a vector search with an `ef_search` of its own (the
    /// connections' is [`Self::connect_only`]'s), begun in one round trip with it.
    async fn ef_search_transaction(
        &self,
        ef_search: Option<u32>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        // An integer, so no injection; SET takes no parameters.
        let ef_search = ef_search.unwrap_or(self.ef_search).clamp(1, 1000);
        let begin = format!("BEGIN READ ONLY; SET LOCAL hnsw.ef_search = {ef_search}");
        Ok(self.pool.begin_with(AssertSqlSafe(begin)).await?)
    }

    /// Runs one shape of a vector search.
    async fn vector_rows(
        &self,
        space: &Space,
        query: &VectorQuery<'_>,
        shape: Shape,
    ) -> Result<Vec<HitRow>, StoreError> {
        let statement =
            bind_vector_search!(sqlx::query_as(AssertSqlSafe(Self::vector_search_sql(space, shape, ""))), query, shape);
        Ok(match query.ef_search {
            Some(ef_search) if ef_search != self.ef_search => {
                let mut tx = self.ef_search_transaction(Some(ef_search)).await?;
                let rows = statement.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows
            }
            _ => statement.fetch_all(&self.pool).await?,
        })
    }

    /// The plan Postgres chooses for a vector search (`EXPLAIN`), to check that large tenants
    /// use the HNSW index and small ones the exact per-tenant scan.
    pub async fn explain_vector_search(&self, space: &Space, query: VectorQuery<'_>) -> Result<String, StoreError> {
        let mut tx = self.ef_search_transaction(query.ef_search).await?;
        let shape = Shape::of(&query);
        let statement = AssertSqlSafe(Self::vector_search_sql(space, shape, "EXPLAIN (COSTS OFF)"));
        let statement = bind_vector_search!(sqlx::query_scalar(statement), &query, shape);
        let lines: Vec<String> = statement.fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        Ok(lines.join("\n"))
    }
}

/// A lexeme as a `to_tsquery` operand: quoted, so that none of its characters is an operator.
fn quote_lexeme(lexeme: &str) -> String {
    format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "''"))
}

#[async_trait]
impl SearchReads for PgStore {
    async fn search_vectors(&self, space: &Space, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, StoreError> {
        check_dimensions(space, query.vector.len())?;
        let shape = Shape::of(&query);
        let mut rows = self.vector_rows(space, &query, shape).await?;
        // Archived messages among the nearest left the list short, unless the tenant has no
        // more vectors: read again, joined.
        let exhausted = rows.first().and_then(|r| r.nearest).is_some_and(|n| n < i64::from(Shape::nearest(&query)));
        if shape == Shape::Nearest && rows.len() < query.limit as usize && !exhausted {
            rows = self.vector_rows(space, &query, Shape::Joined).await?;
        }
        // The index orders by its own copy of each vector (normalised, in half precision), which
        // can differ from the stored one in the fifth decimal: list in the order of the
        // similarities reported.
        rows.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        rows.into_iter()
            .map(|r| Ok(VectorHit { similarity: r.similarity, message: StoredMessage::try_from(r.message)? }))
            .collect()
    }

    async fn search_lexical(&self, query: LexicalQuery<'_>) -> Result<Vec<LexicalHit>, StoreError> {
        // $1 the tsquery's text, $11 and $12 the words and their weights. `terms` is parsed once
        // (MATERIALIZED): inlined, every matching row would parse each word again.
        let (function, text, terms, rank, order) = match query.query {
            TextQuery::Websearch(text) => (
                "websearch_to_tsquery",
                text.clone(),
                Vec::new(),
                "ts_rank_cd(m.search_text, q)::float8",
                "rank DESC, m.created_at DESC",
            ),
            TextQuery::AnyOf(terms) if terms.is_empty() => return Ok(Vec::new()),
            TextQuery::AnyOf(terms) => (
                "to_tsquery",
                terms.iter().map(|t| quote_lexeme(&t.lexeme)).collect::<Vec<_>>().join(" | "),
                terms.iter().map(|t| (quote_lexeme(&t.lexeme), t.weight)).collect::<Vec<_>>(),
                "(SELECT coalesce(sum(w.weight), 0) FROM terms w WHERE m.search_text @@ w.q)::float8",
                "rank DESC, m.created_at DESC",
            ),
            // Every match ranks the same: the newest, read backwards along (tenant, created_at).
            TextQuery::Newest(term) => (
                "to_tsquery",
                quote_lexeme(&term.lexeme),
                vec![(quote_lexeme(&term.lexeme), term.weight)],
                "($12::float8[])[1]",
                "m.created_at DESC",
            ),
        };
        let (words, weights): (Vec<String>, Vec<f64>) = terms.into_iter().unzip();
        // With a query vector, the hits' similarities come with them ($13).
        let (similarity, join) = match query.similarity_to {
            Some((space, _)) => (
                "1 - (v.embedding <=> $13::halfvec)",
                format!(
                    "LEFT JOIN {} v ON v.tenant_id = h.tenant_id AND v.message_id = h.id",
                    Self::vector_table(space)
                ),
            ),
            None => ("NULL::float8", String::new()),
        };
        let statement = AssertSqlSafe(format!(
            "WITH terms AS MATERIALIZED (
                 SELECT to_tsquery('simple'::regconfig, t.word) AS q, t.weight
                 FROM unnest($11::text[], $12::float8[]) AS t(word, weight)
             ),
             hits AS (
                 SELECT {}, {rank} AS rank
                 FROM messages m, {function}('simple'::regconfig, $1) q
                 WHERE m.tenant_id = $2 AND m.search_text @@ q AND {}
                 ORDER BY {order}
                 LIMIT $10
             )
             SELECT h.*, {similarity} AS similarity
             FROM hits h {join}
             ORDER BY h.rank DESC, h.created_at DESC",
            message_columns!(),
            filters!()
        ));
        let mut statement =
            bind_filters!(sqlx::query_as(statement).bind(text).bind(query.tenant_id.as_str()), query.filters)
                .bind(i64::from(query.limit))
                .bind(&words)
                .bind(&weights);
        if let Some((space, vector)) = query.similarity_to {
            check_dimensions(space, vector.len())?;
            statement = statement.bind(Vector::from(vector.to_vec()));
        }
        let rows: Vec<LexicalRow> = statement.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| {
                Ok(LexicalHit { rank: r.rank, similarity: r.similarity, message: StoredMessage::try_from(r.message)? })
            })
            .collect()
    }

    async fn lexemes(&self, text: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT lexeme FROM unnest(to_tsvector('simple'::regconfig, $1))")
            .bind(text)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn tenant_size(&self, tenant: &TenantId) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM messages WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_one(&self.pool)
            .await?)
    }

    async fn document_frequencies(
        &self,
        tenant: &TenantId,
        lexemes: &[String],
        cap: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if lexemes.is_empty() {
            return Ok(Vec::new());
        }
        let quoted: Vec<String> = lexemes.iter().map(|l| quote_lexeme(l)).collect();
        let counts: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT t.i, (SELECT count(*) FROM (SELECT 1 FROM messages m
                          WHERE m.tenant_id = $1 AND m.search_text @@ to_tsquery('simple'::regconfig, t.word)
                          LIMIT $3) s)
             FROM unnest($2::text[]) WITH ORDINALITY AS t(word, i)",
        )
        .bind(tenant.as_str())
        .bind(&quoted)
        .bind(cap)
        .fetch_all(&self.pool)
        .await?;
        let mut frequencies = vec![0; lexemes.len()];
        for (i, n) in counts {
            if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| frequencies.get_mut(i)) {
                *slot = n;
            }
        }
        Ok(frequencies)
    }
}
