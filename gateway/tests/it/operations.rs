//! Authentication, health, readiness, metrics and the API document.

use axum::http::{Method, StatusCode};

use crate::harness::{App, KEY, message};

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_on_every_api_route() -> anyhow::Result<()> {
    let app = App::start().await?;
    let id = "0190f5c4-7a11-7cc0-8000-000000000001";
    let routes = [
        (Method::POST, "/v1/messages".to_owned()),
        (Method::POST, "/v1/messages/batch".to_owned()),
        (Method::GET, format!("/v1/messages/{id}")),
        (Method::GET, "/v1/memory/search?tenant_id=a&query=b".to_owned()),
    ];
    for (method, uri) in &routes {
        for key in [None, Some("wrong-key-wrong-key-wrong")] {
            let r = app.send(method.clone(), uri, Some(message("a", "b").to_string().into()), key).await?;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri} with {key:?}");
            assert_eq!(r.body["code"], "unauthorized");
            assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"memory\"");
        }
    }
    // The key may also come as a bearer token.
    let req = axum::http::Request::get("/v1/memory/search?tenant_id=a&query=b")
        .header("authorization", format!("Bearer {KEY}"))
        .body(axum::body::Body::empty())?;
    let response = tower::ServiceExt::oneshot(gateway::router(app.state.clone()), req).await?;
    assert_eq!(response.status(), StatusCode::OK);
    app.finish().await
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_an_admin_key() -> anyhow::Result<()> {
    let env = common::testing::TestEnv::start_with(|vars| {
        vars.remove("MEMORY_ADMIN_API_KEY");
    })
    .await?;
    let err = gateway::Gateway::build(&env.config, env.deps.clone(), &mut Default::default())
        .await
        .err()
        .expect("must refuse");
    let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("MEMORY_ADMIN_API_KEY"), "{err}: {source}");
    env.finish().await
}

#[tokio::test]
async fn made_up_methods_share_one_metrics_label() -> anyhow::Result<()> {
    let app = App::start().await?;
    // Read twice, so the second read already holds the series of `GET /metrics` itself.
    app.send(Method::GET, "/metrics", None, None).await?;
    let before = app.send(Method::GET, "/metrics", None, None).await?.body.as_str().unwrap().len();
    for i in 0..1_000 {
        let method = Method::from_bytes(format!("X{i:04}QZ").as_bytes())?;
        let r = app.send(method, "/v1/messages", None, None).await?;
        assert!(r.status.is_client_error(), "{r:?}");
    }
    let text = app.send(Method::GET, "/metrics", None, None).await?.body.as_str().unwrap().to_owned();
    assert!(!text.contains("QZ\""), "a made-up method became a label");
    assert!(text.contains("method=\"OTHER\""), "{text}");
    // A few new series (count and duration of `OTHER`), not a thousand of each.
    assert!(text.len() < before + 8_192, "/metrics grew from {before} to {} bytes", text.len());
    app.finish().await
}

#[tokio::test]
async fn health_readiness_metrics_and_docs_need_no_key() -> anyhow::Result<()> {
    let app = App::start().await?;
    app.post("/v1/messages?wait=embedded", &message("acme", "count me")).await?;
    for uri in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"] {
        let r = app.send(Method::GET, uri, None, None).await?;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {r:?}");
        assert!(r.headers.contains_key("x-request-id"), "{uri}");
    }
    let metrics = app.send(Method::GET, "/metrics", None, None).await?;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("memory_gateway_http_requests_total{method=\"POST\",route=\"/v1/messages\",status=\"201\"} 1"),
        "{text}"
    );
    let spec = app.send(Method::GET, "/openapi.json", None, None).await?;
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/v1/messages", "/v1/messages/batch", "/v1/messages/{id}", "/v1/memory/search"] {
        assert!(spec.body["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    // Readiness turns 503 once shutdown begins.
    app.env.shutdown.cancel();
    let r = app.send(Method::GET, "/readyz", None, None).await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    app.finish().await
}

#[tokio::test]
async fn when_the_ingest_stream_is_unavailable_nothing_is_accepted_and_the_id_to_retry_with_is_given()
-> anyhow::Result<()> {
    let app = App::without_workers(|_| {}).await?;
    app.env.nats.jetstream().delete_stream(app.env.subjects.stream(common::contract::StreamKind::Ingest)).await?;
    let r = app.post("/v1/messages", &message("acme", "nobody stores me")).await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body["code"], "publish_failed");
    assert!(r.body["message_id"].is_string(), "{r:?}");

    let batch = serde_json::json!({"messages": [message("acme", "one"), message("acme", "two")]});
    let r = app.post("/v1/messages/batch", &batch).await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body["queued"], 0);
    for item in r.body["results"].as_array().unwrap() {
        assert_eq!(item["error"]["code"], "publish_failed");
        assert_eq!(item["id"], item["error"]["message_id"]);
    }
    app.finish().await
}

#[tokio::test]
async fn the_served_openapi_document_passes_an_independent_validator() -> anyhow::Result<()> {
    // openapi-spec-validator (PyPI), installed by scripts/services.sh: client generators refuse
    // documents it rejects (a response without its required description, say).
    let validator = std::env::var("MEMORY_TEST_OPENAPI_VALIDATOR")
        .map_err(|_| anyhow::anyhow!("MEMORY_TEST_OPENAPI_VALIDATOR is not set: run scripts/services.sh env"))?;
    let app = App::without_workers(|_| {}).await?;
    let spec = app.send(Method::GET, "/openapi.json", None, None).await?;
    assert_eq!(spec.status, StatusCode::OK);
    let file = std::env::temp_dir().join(format!("memory-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&spec.body)?)?;
    let out = tokio::process::Command::new(&validator).arg(&file).output().await?;
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the validator rejects /openapi.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every route the compatibility suite relies on is documented.
    for path in ["/v1/admin/health", "/v1/admin/readiness", "/v1/admin/retention/run", "/v1/messages/batch/delete"] {
        assert!(spec.body["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    app.finish().await
}

#[tokio::test]
async fn swagger_ui_renders_every_operation_in_headless_chromium() -> anyhow::Result<()> {
    // Debian's chromium, installed by `scripts/services.sh test-tools`.
    let chromium = std::env::var("MEMORY_TEST_CHROMIUM").ok().filter(|c| !c.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("MEMORY_TEST_CHROMIUM is not set: run scripts/services.sh test-tools, then env")
    })?;
    let app = App::without_workers(|_| {}).await?;
    let addr = app.serve_http(|_| {}).await?;
    let spec = app.send(Method::GET, "/openapi.json", None, None).await?.body;
    let operations: usize =
        spec["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    let profile = std::env::temp_dir().join(format!("memory-chromium-{}", std::process::id()));
    let out = tokio::process::Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Time for the page to fetch /openapi.json and render it.
        .arg("--virtual-time-budget=20000")
        .arg("--dump-dom")
        .arg(format!("http://{addr}/docs/"))
        .kill_on_drop(true)
        .output()
        .await?;
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains("Memory Layer API"), "the title did not render:\n{dom:.2000}");
    // Swagger UI lists each operation as an `opblock`; a document it cannot read shows errors.
    let rendered = dom.matches("class=\"opblock opblock-").count();
    assert_eq!(rendered, operations, "Swagger UI rendered {rendered} of {operations} operations");
    assert!(!dom.contains("errors-wrapper"), "Swagger UI shows errors:\n{dom:.4000}");
    app.finish().await
}
