//! `memory probe`: a container healthcheck that needs no curl in the image.

use std::time::Duration;

use anyhow::Context as _;

/// GETs `url` (default: readiness on `MEMORY_METRICS_ADDR`, with `0.0.0.0` asked as
/// `127.0.0.1`) and succeeds on a 2xx answer.
pub(crate) async fn probe(url: Option<String>, timeout_secs: u64) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let config = common::Config::from_env()?;
            let mut addr = config.metrics.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/readyz")
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs))
        .build()
        .context("building the HTTP client")?;
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {}", body.trim());
    println!("{}", body.trim());
    Ok(())
}
