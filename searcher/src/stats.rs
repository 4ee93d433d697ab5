//! Word statistics of large tenants, reused for a while: how many messages a tenant has and how
//! many contain each query word. They weigh the words (IDF), which need not be exact, and in a
//! tenant of a million messages counting them afresh would cost more than the search itself.
//! Small tenants are counted every time (it is cheap there), so their weights are always exact.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::domain::TenantId;
use lru::LruCache;

/// How long a count is reused.
const TTL: Duration = Duration::from_secs(60);
/// Tenants smaller than this are counted every time.
pub(crate) const CACHED_FROM: i64 = 1_000;
/// Tenants and words remembered, the least recently used forgotten first.
const TENANTS: usize = 10_000;
const WORDS: usize = 100_000;

pub(crate) struct WordStats {
    sizes: Mutex<LruCache<TenantId, (Instant, i64)>>,
    counts: Mutex<LruCache<(TenantId, String), (Instant, i64)>>,
}

impl WordStats {
    pub(crate) fn new() -> Self {
        let capacity = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self { sizes: Mutex::new(LruCache::new(capacity(TENANTS))), counts: Mutex::new(LruCache::new(capacity(WORDS))) }
    }

    /// The tenant's number of messages, from `count` unless a recent count of a large tenant is at hand.
    pub(crate) async fn size<E, F>(&self, tenant: &TenantId, count: impl FnOnce() -> F) -> Result<i64, E>
    where
        F: Future<Output = Result<i64, E>>,
    {
        if let Some(&(at, n)) = self.sizes.lock().expect("word stats").get(tenant)
            && at.elapsed() < TTL
        {
            return Ok(n);
        }
        let n = count().await?;
        if n >= CACHED_FROM {
            self.sizes.lock().expect("word stats").put(tenant.clone(), (Instant::now(), n));
        }
        Ok(n)
    }

    /// How many of the tenant's `size` messages contain each word: recent counts of a large
    /// tenant are reused, `count` counts the rest (given them in order, it answers in order).
    pub(crate) async fn frequencies<E, F>(
        &self,
        tenant: &TenantId,
        size: i64,
        words: &[String],
        count: impl FnOnce(Vec<String>) -> F,
    ) -> Result<Vec<i64>, E>
    where
        F: Future<Output = Result<Vec<i64>, E>>,
    {
        let cached = size >= CACHED_FROM;
        let mut known: Vec<Option<i64>> = if cached {
            let mut counts = self.counts.lock().expect("word stats");
            words
                .iter()
                .map(|w| counts.get(&(tenant.clone(), w.clone())).filter(|(at, _)| at.elapsed() < TTL).map(|&(_, n)| n))
                .collect()
        } else {
            vec![None; words.len()]
        };
        let missing: Vec<String> =
            words.iter().zip(&known).filter(|(_, k)| k.is_none()).map(|(w, _)| w.clone()).collect();
        if !missing.is_empty() {
            let counted = count(missing.clone()).await?;
            let mut counted = missing.into_iter().zip(counted);
            let mut counts = self.counts.lock().expect("word stats");
            for slot in known.iter_mut().filter(|k| k.is_none()) {
                if let Some((word, n)) = counted.next() {
                    if cached {
                        counts.put((tenant.clone(), word), (Instant::now(), n));
                    }
                    *slot = Some(n);
                }
            }
        }
        Ok(known.into_iter().map(Option::unwrap_or_default).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    #[tokio::test]
    async fn large_tenants_are_counted_once_small_ones_every_time() {
        let stats = WordStats::new();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let count = |n: i64| {
            let calls = &calls;
            move || async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, ()>(n)
            }
        };
        assert_eq!(stats.size(&tenant(), count(10)).await, Ok(10));
        assert_eq!(stats.size(&tenant(), count(20)).await, Ok(20), "small: counted again");
        assert_eq!(stats.size(&tenant(), count(CACHED_FROM)).await, Ok(CACHED_FROM));
        assert_eq!(stats.size(&tenant(), count(5)).await, Ok(CACHED_FROM), "large: reused");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn only_unknown_words_are_counted_and_answers_keep_the_words_order() {
        let stats = WordStats::new();
        let words = |w: &[&str]| w.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let asked = Mutex::new(Vec::new());
        let count = |missing: Vec<String>| {
            asked.lock().expect("asked").push(missing.clone());
            async move { Ok::<_, ()>(missing.iter().map(|w| w.len() as i64).collect()) }
        };
        let got = stats.frequencies(&tenant(), CACHED_FROM, &words(&["ferry", "to"]), count).await;
        assert_eq!(got, Ok(vec![5, 2]));
        let got = stats.frequencies(&tenant(), CACHED_FROM, &words(&["lisbon", "ferry", "to", "x"]), count).await;
        assert_eq!(got, Ok(vec![6, 5, 2, 1]));
        let got = stats.frequencies(&tenant(), 10, &words(&["ferry"]), count).await;
        assert_eq!(got, Ok(vec![5]));
        assert_eq!(
            *asked.lock().expect("asked"),
            [words(&["ferry", "to"]), words(&["lisbon", "x"]), words(&["ferry"])],
            "a small tenant's words are counted afresh"
        );
    }
}
