//! Embedding throughput of the providers, in process (no services needed):
//! `MEMORY_MODEL_DIR=$(scripts/fetch-model.sh) cargo bench -p embedder --bench embed`.
//! `hash` always; `local` (all-MiniLM-L6-v2 with candle) at batch 32 and 64 when MEMORY_MODEL_DIR
//! is set. Texts are chat messages of 8 to 20 words. `BENCH_TEXTS` sets how many (default 512).
//! `BENCH_TEXTS_FILE` takes them from a file instead, one per line (the first `BENCH_TEXTS`), to
//! measure the model alone on a deployment's own messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::BreakerConfig;
use embedder::provider::LocalProvider;
use embedder::{Embeddings, HashProvider, Metrics, Provider, Purpose};
use prometheus_client::registry::Registry;

const OPENINGS: &[&str] = &[
    "I think",
    "Yesterday",
    "Could you remind me whether",
    "My sister said",
    "Honestly,",
    "By the way,",
    "Last summer",
    "Do you remember that",
    "The doctor told me",
    "At work today",
];
const MIDDLES: &[&str] = &[
    "the flight to Lisbon was delayed by three hours",
    "we should move the budget review to Friday afternoon",
    "my cat knocked the plant off the kitchen window again",
    "the new project deadline is the fourteenth of June",
    "I finally finished reading the book you recommended",
    "the museum is closed on Mondays until the end of March",
    "our piano lessons start again next week at six",
    "the invoice from the garden company was twice the quote",
];
const ENDINGS: &[&str] =
    &["", " and I am not sure what to do", " so please keep that in mind", " which surprised everyone"];

fn text(i: usize) -> String {
    format!(
        "{} {}{}",
        OPENINGS[i % OPENINGS.len()],
        MIDDLES[(i / OPENINGS.len()) % MIDDLES.len()],
        ENDINGS[(i / 7) % ENDINGS.len()]
    )
}

fn embeddings(provider: Arc<dyn Provider>) -> Embeddings {
    let breaker = BreakerConfig { failures: 5, cooldown: Duration::from_secs(30), successes: 2 };
    Embeddings::new(provider, breaker, Metrics::register(&mut Registry::default()))
}

/// Texts per second over `rounds` passes of `texts` in calls of `batch`, after one warm-up call.
async fn measure(e: &Embeddings, texts: &[String], batch: usize, rounds: usize) -> anyhow::Result<f64> {
    e.embed(&texts[..batch.min(texts.len())], Purpose::Document).await?;
    let started = Instant::now();
    for _ in 0..rounds {
        for chunk in texts.chunks(batch) {
            e.embed(chunk, Purpose::Document).await?;
        }
    }
    Ok((texts.len() * rounds) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = std::env::var("BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let texts: Vec<String> = match std::env::var("BENCH_TEXTS_FILE") {
        Ok(path) => {
            std::fs::read_to_string(&path)?.lines().filter(|l| !l.is_empty()).take(n).map(String::from).collect()
        }
        Err(_) => (0..n).map(text).collect(),
    };
    anyhow::ensure!(!texts.is_empty(), "no texts to embed");
    let n = texts.len();
    let words = texts.iter().map(|t| t.split_whitespace().count()).sum::<usize>() as f64 / n as f64;
    println!("{n} texts, {words:.1} words on average; {} CPUs", std::thread::available_parallelism()?);

    let hash = embeddings(Arc::new(HashProvider::new()));
    println!("hash        batch 64: {:>9.0} texts/s", measure(&hash, &texts, 64, 20).await?);

    match std::env::var("MEMORY_MODEL_DIR") {
        Ok(dir) => {
            for batch in [32, 64] {
                let local = embeddings(Arc::new(LocalProvider::load(dir.as_ref(), batch)?));
                println!("local       batch {batch}: {:>9.0} texts/s", measure(&local, &texts, batch, 1).await?);
            }
            let local = embeddings(Arc::new(LocalProvider::load(dir.as_ref(), 1)?));
            let started = Instant::now();
            for t in texts.iter().take(50) {
                local.embed(std::slice::from_ref(t), Purpose::Query).await?;
            }
            println!("local       one query: {:>8.1} ms", started.elapsed().as_secs_f64() * 1000.0 / 50.0);
        }
        Err(_) => println!("local: skipped (set MEMORY_MODEL_DIR=$(scripts/fetch-model.sh))"),
    }
    Ok(())
}
