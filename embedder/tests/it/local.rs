//! The `local` provider (all-MiniLM-L6-v2 with candle) against an independent reference
//! (tests/data/minilm-reference.json, from scripts/minilm-reference.py), and through the pipeline.

use std::sync::Arc;

use anyhow::Context as _;
use common::config::BreakerConfig;
use common::testing::TestEnv;
use embedder::provider::LocalProvider;
use embedder::{Embeddings, Metrics, Purpose};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::support::{publish, spawn_embedder, until_status, vector};

#[derive(Deserialize)]
struct Reference {
    tolerance: f32,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    vector: Vec<f32>,
}

fn reference() -> anyhow::Result<Reference> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/minilm-reference.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn model_dir() -> anyhow::Result<String> {
    std::env::var("MEMORY_TEST_MODEL_DIR")
        .context("MEMORY_TEST_MODEL_DIR is not set: run scripts/test.sh, or export MEMORY_TEST_MODEL_DIR=$(scripts/fetch-model.sh)")
}

fn embeddings() -> anyhow::Result<Embeddings> {
    let provider = LocalProvider::load(model_dir()?.as_ref(), 32)?;
    let breaker = BreakerConfig { failures: 5, cooldown: std::time::Duration::from_secs(30), successes: 2 };
    Ok(Embeddings::new(Arc::new(provider), breaker, Metrics::register(&mut Registry::default())))
}

async fn embed(e: &Embeddings, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
    let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    e.embed(&texts, Purpose::Document).await?.into_iter().map(|a| Ok(a?)).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[tokio::test]
async fn vectors_match_the_reference_implementation() -> anyhow::Result<()> {
    let reference = reference()?;
    let e = embeddings()?;
    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    // All in one padded batch: padding must not move any vector.
    let batch = embed(&e, &texts).await?;
    for (sentence, got) in reference.sentences.iter().zip(&batch) {
        assert_eq!(got.len(), 384);
        let diff = max_difference(got, &sentence.vector);
        assert!(diff < reference.tolerance, "{:?}: max |Δ| = {diff}", sentence.text);
    }
    // One at a time: the same vectors.
    for (text, in_batch) in texts.iter().zip(&batch) {
        let alone = embed(&e, &[text]).await?;
        assert!(max_difference(&alone[0], in_batch) < 1e-5, "{text:?} differs alone and in a batch");
        // Queries run on the model's second instance: the same vectors.
        let query = e.embed(&[(*text).to_owned()], Purpose::Query).await?.remove(0)?;
        assert!(max_difference(&query, in_batch) < 1e-5, "{text:?} differs as a query");
    }
    Ok(())
}

#[tokio::test]
async fn a_paraphrase_is_closer_than_an_unrelated_sentence() -> anyhow::Result<()> {
    let e = embeddings()?;
    let v =
        embed(&e, &["I love Python programming", "Python is my favourite language", "The weather in Paris is rainy"])
            .await?;
    let (paraphrase, unrelated) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    // The Python library gives 0.8402 and -0.0503.
    assert!((paraphrase - 0.8402).abs() < 1e-3, "{paraphrase}");
    assert!((unrelated + 0.0503).abs() < 1e-3, "{unrelated}");
    Ok(())
}

#[tokio::test]
async fn long_texts_are_cut_at_256_tokens() -> anyhow::Result<()> {
    let e = embeddings()?;
    let long = "word ".repeat(1000);
    let longer = format!("{long} and then something completely different at the very end");
    let v = embed(&e, &[&long, &longer]).await?;
    assert!(max_difference(&v[0], &v[1]) < 1e-5, "only the first 256 tokens count");
    Ok(())
}

#[tokio::test]
async fn the_pipeline_stores_the_local_models_vectors() -> anyhow::Result<()> {
    let dir = model_dir()?;
    let env = TestEnv::start_with(|vars| {
        vars.insert("MEMORY_EMBEDDING_PROVIDER".into(), "local".into());
        vars.insert("MEMORY_MODEL_DIR".into(), dir);
    })
    .await?;
    let _embedder = spawn_embedder(&env).await?;
    let reference = reference()?;
    let id = publish(&env, None, &reference.sentences[0].text).await?;
    // The speaker's name is part of the embedded text.
    let named = publish(&env, Some("Alice"), "my sister's wedding is on the 14th of June in Porto").await?;
    until_status(&env, id, "embedded").await?;
    until_status(&env, named, "embedded").await?;
    let stored = vector(&env, id).await?.expect("a vector");
    assert!(max_difference(&stored, &reference.sentences[0].vector) < reference.tolerance);
    let stored = vector(&env, named).await?.expect("a vector");
    assert!(max_difference(&stored, &reference.sentences[2].vector) < reference.tolerance);
    let space: (String, String, i32) =
        sqlx::query_as("SELECT provider, model, dimensions FROM embedding_spaces WHERE active")
            .fetch_one(env.store.pool())
            .await?;
    assert_eq!(space, ("local".into(), "all-MiniLM-L6-v2".into(), 384));
    env.finish().await
}
