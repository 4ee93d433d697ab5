//! The `local` provider: sentence-transformers all-MiniLM-L6-v2 run on the CPU with candle. Texts
//! are tokenised (truncated at 256 tokens, padded to the longest text of the batch), run through
//! the 6-layer BERT, mean-pooled over their real tokens and L2-normalised: 384 dimensions, the
//! same vectors as the Python library (tests/data/minilm-reference.json checks it).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use common::contract::SpaceRef;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{Embedding, Provider, ProviderError, Purpose};

/// sentence-transformers' `max_seq_length` for this model.
const MAX_TOKENS: usize = 256;
const MODEL: &str = "all-MiniLM-L6-v2";
const DIMENSIONS: u32 = 384;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {file}: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file} is not a usable BERT config: {reason}")]
    Config { file: String, reason: String },
    #[error("cannot load the tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot load the weights: {0}")]
    Weights(#[from] candle_core::Error),
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
}

/// Two instances of the model: a search's query never waits behind a batch of documents
/// (which takes seconds on two cores), at the cost of a second copy of the weights (90 MB).
pub struct LocalProvider {
    documents: Arc<Mutex<Model>>,
    queries: Arc<Mutex<Model>>,
    batch_size: usize,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").field("batch_size", &self.batch_size).finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self, LoadError> {
        let file = |name: &str| dir.join(name);
        let config_path = file("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| LoadError::Read { file: config_path.display().to_string(), source })?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| LoadError::Config { file: config_path.display().to_string(), reason: e.to_string() })?;
        if config.hidden_size != DIMENSIONS as usize {
            return Err(LoadError::Config {
                file: config_path.display().to_string(),
                reason: format!("hidden size {} is not all-MiniLM-L6-v2's {DIMENSIONS}", config.hidden_size),
            });
        }

        let model = || Model::load(dir, &config);
        Ok(Self { documents: Arc::new(Mutex::new(model()?)), queries: Arc::new(Mutex::new(model()?)), batch_size })
    }
}

impl Model {
    fn load(dir: &Path, config: &BertConfig) -> Result<Self, LoadError> {
        let file = |name: &str| dir.join(name);
        let mut tokenizer =
            Tokenizer::from_file(file("tokenizer.json")).map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        // The shipped tokenizer.json pads every text to 128 tokens and cuts at 128: pad to the
        // longest text of the batch instead, and cut where sentence-transformers does.
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;

        let weights = file("model.safetensors");
        if !weights.is_file() {
            return Err(LoadError::Read {
                file: weights.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let vb = mmap(&weights)?;
        let bert = BertModel::load(vb, config)?;
        Ok(Self { bert, tokenizer })
    }
}

/// Memory-maps the weights (candle's loader is `unsafe` because the file could change underneath).
#[allow(unsafe_code)]
fn mmap(path: &Path) -> Result<VarBuilder<'static>, LoadError> {
    // SAFETY: the model file is read-only for the life of the process; nothing rewrites it.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? })
}

impl Model {
    /// Mean-pooled embeddings of one batch (not yet normalised).
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| format!("tokenizing: {e}"))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> = encodings.iter().flat_map(|e| e.get_attention_mask().iter().copied()).collect();
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let device = &self.bert.device;
            let ids = Tensor::from_vec(ids, (texts.len(), len), device)?;
            let mask = Tensor::from_vec(mask, (texts.len(), len), device)?;
            let types = ids.zeros_like()?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens only: padding must not move the vector.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        };
        run().map_err(|e| format!("running the model: {e}"))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn space(&self) -> SpaceRef {
        SpaceRef { provider: self.name().into(), model: MODEL.into(), dimensions: DIMENSIONS }
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Embedding>, ProviderError> {
        let model = match purpose {
            Purpose::Document => self.documents.clone(),
            Purpose::Query => self.queries.clone(),
        };
        let texts = texts.to_vec();
        let batch_size = self.batch_size;
        // Inference is CPU-bound: keep it off the async workers, one batch at a time per instance.
        let vectors = tokio::task::spawn_blocking(move || {
            let model = model.lock().map_err(|_| "the model lock is poisoned".to_owned())?;
            // Texts of similar length together: each chunk is padded to its longest text, and a
            // paragraph among short lines would make the whole chunk cost a paragraph each.
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| texts[i].len());
            let mut out = vec![Vec::new(); texts.len()];
            for chunk in order.chunks(batch_size) {
                let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
                for (&i, vector) in chunk.iter().zip(model.embed(&batch)?) {
                    out[i] = vector;
                }
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|e| ProviderError::Model { reason: format!("inference task failed: {e}") })?
        .map_err(|reason| ProviderError::Model { reason })?;
        Ok(vectors.into_iter().map(Ok).collect())
    }
}
