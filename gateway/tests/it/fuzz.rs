//! Fuzzers: generated requests against every route of the OpenAPI document, and generated events
//! on the ingest subjects. The quick mode runs in `scripts/test.sh`; `MEMORY_FUZZ_CASES` and
//! `MEMORY_FUZZ_EVENTS` make a longer run (`scripts/test.sh --fuzz-long`), and `MEMORY_FUZZ_SEED`
//! replays one.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tower::ServiceExt;
use utoipa::OpenApi;

use crate::harness::{App, KEY};

/// Largest problem response allowed, whatever the request.
const PROBLEM_MAX: usize = 64 * 1024;
/// Largest successful response the fuzzer expects (an export of what it stored).
const ANSWER_MAX: usize = 8 << 20;

fn setting(name: &str, quick: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(quick)
}

fn seed() -> u64 {
    let seed = setting("MEMORY_FUZZ_SEED", rand::random());
    println!("fuzz seed {seed} (MEMORY_FUZZ_SEED={seed} replays it)");
    seed
}

/// One route of the document.
struct Route {
    method: Method,
    template: String,
    operation: Value,
}

fn routes(doc: &Value) -> Vec<Route> {
    let mut routes = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if let Ok(method) = method.to_uppercase().parse::<Method>() {
                routes.push(Route { method, template: template.clone(), operation: operation.clone() });
            }
        }
    }
    routes
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(path) => path.trim_start_matches('#').split('/').skip(1).fold(doc, |v, part| &v[part]),
        None => schema,
    }
}

/// A value the schema describes (roughly: the fuzzer's starting point, before mutations).
fn generate(doc: &Value, schema: &Value, rng: &mut StdRng, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 6 {
        return Value::Null;
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            let chosen = options.choose(rng).cloned().unwrap_or(Value::Null);
            return generate(doc, &chosen, rng, depth + 1);
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.choose(rng).cloned().unwrap_or(Value::Null);
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(types) => {
            let types: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            types.choose(rng).map_or("null", |t| *t).to_owned()
        }
        _ if schema.get("properties").is_some() => "object".into(),
        _ => ["string", "integer", "boolean"].choose(rng).copied().unwrap_or("string").to_owned(),
    };
    match kind.as_str() {
        "object" => {
            let required: Vec<&str> =
                schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let mut object = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    if required.contains(&name.as_str()) || rng.random_bool(0.5) {
                        object.insert(name.clone(), generate(doc, property, rng, depth + 1));
                    }
                }
            }
            Value::Object(object)
        }
        "array" => {
            let n = rng.random_range(0..4);
            Value::Array((0..n).map(|_| generate(doc, &schema["items"], rng, depth + 1)).collect())
        }
        "string" => match schema["format"].as_str() {
            Some("uuid") => json!(uuid::Uuid::now_v7()),
            Some("date-time") => json!(chrono::Utc::now().to_rfc3339()),
            _ => json!(["acme", "hello there", "c", "user", "fuzz"].choose(rng).copied().unwrap_or("x")),
        },
        "integer" => json!(rng.random_range(0..20)),
        "number" => json!(rng.random::<f64>()),
        "boolean" => json!(rng.random_bool(0.5)),
        _ => Value::Null,
    }
}

/// Something hostile in place of a value.
fn hostile(rng: &mut StdRng) -> Value {
    match rng.random_range(0..14) {
        0 => json!("x".repeat(rng.random_range(1_000..120_000))),
        1 => json!("é🙂\u{202e}ق\u{0301}".repeat(rng.random_range(1..2_000))),
        2 => json!("\u{0}\u{7}\r\n\t\u{1b}[31m\u{fffd}"),
        3 => (0..rng.random_range(50..300)).fold(json!(1), |inner, _| json!({"k": inner})),
        4 => Value::Object((0..rng.random_range(100..3_000)).map(|i| (format!("k{i}"), json!(i))).collect()),
        5 => json!(["not-a-uuid", "00000000-0000-0000-0000-00000000000g", "", "{}"].choose(rng).copied()),
        6 => json!([-1, i64::MAX, i64::MIN].choose(rng).copied()),
        7 => json!(1e308),
        8 => json!(null),
        9 => json!(true),
        10 => json!([]),
        11 => json!({}),
        12 => json!(""),
        _ => Value::Array((0..rng.random_range(100..2_000)).map(|i| json!(i)).collect()),
    }
}

/// Mutates one spot of `value`: a hostile value, a field removed or an unknown field added.
fn mutate(value: &mut Value, rng: &mut StdRng) {
    match value {
        Value::Object(object) if !object.is_empty() && rng.random_bool(0.7) => {
            let keys: Vec<String> = object.keys().cloned().collect();
            let key = keys.choose(rng).expect("not empty").clone();
            match rng.random_range(0..4) {
                0 => {
                    object.remove(&key);
                }
                1 => {
                    object.insert(format!("unknown_{}", rng.random_range(0..100)), hostile(rng));
                }
                _ => mutate(object.get_mut(&key).expect("present"), rng),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..items.len());
            mutate(&mut items[i], rng);
        }
        _ => *value = hostile(rng),
    }
}

fn path_value(name: &str, rng: &mut StdRng, tenants: &[&str]) -> String {
    // (Tenants the fuzzer holds keys for are never deleted: `tenants` leaves them out then.)
    if rng.random_bool(0.15) {
        let garbage = ["..%2F..%2Fetc", "%00", &"z".repeat(300), "%F0%9F%99%82", "a%20b", "-", "nope"];
        return garbage.choose(rng).copied().unwrap_or("x").to_owned();
    }
    match name {
        "tenant_id" => tenants.choose(rng).copied().unwrap_or("acme").to_owned(),
        "conversation_id" => "c".into(),
        _ => uuid::Uuid::now_v7().to_string(),
    }
}

fn query_value(parameter: &Value, doc: &Value, rng: &mut StdRng) -> String {
    let value = if rng.random_bool(0.2) { hostile(rng) } else { generate(doc, &parameter["schema"], rng, 0) };
    let text = match value {
        Value::String(s) => s,
        other => other.to_string(),
    };
    // At most 3,000 characters and 4 KiB once percent-encoded, so a route with many parameters
    // still makes a URI the HTTP types accept (64 KiB).
    let mut encoded_len = 0;
    text.chars()
        .take(3_000)
        .take_while(|c| {
            encoded_len += encode(c.encode_utf8(&mut [0; 4])).len();
            encoded_len <= 4_096
        })
        .collect()
}

fn encode(text: &str) -> String {
    crate::harness::urlencode(text)
}

/// One generated request, described for the failure report.
struct Case {
    request: Request<Body>,
    described: String,
}

fn case(doc: &Value, routes: &[Route], keys: &[String], rng: &mut StdRng, body_limit: usize) -> anyhow::Result<Case> {
    let route = routes.choose(rng).expect("routes");
    let tenants = ["acme", "globex", "fuzz-a", "fuzz-b"];
    let parameters: Vec<&Value> =
        route.operation["parameters"].as_array().map(|p| p.iter().collect()).unwrap_or_default();
    let mut path = route.template.clone();
    let mut query = Vec::new();
    for parameter in &parameters {
        let name = parameter["name"].as_str().unwrap_or_default();
        match parameter["in"].as_str() {
            Some("path") => {
                let tenants = if route.method == Method::DELETE { &tenants[2..] } else { &tenants[..] };
                path = path.replace(&format!("{{{name}}}"), &path_value(name, rng, tenants));
            }
            // Waiting for an embedding is legitimate but slow; the fuzzer never waits.
            Some("query")
                if name != "wait" && (parameter["required"].as_bool() == Some(true) || rng.random_bool(0.5)) =>
            {
                query.push(format!("{name}={}", encode(&query_value(parameter, doc, rng))));
            }
            _ => {}
        }
    }
    if rng.random_bool(0.05) {
        query.push(format!("unknown={}", rng.random_range(0..9)));
    }
    let uri = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
    let method = if rng.random_bool(0.05) {
        [Method::PATCH, Method::OPTIONS, Method::HEAD, Method::from_bytes(b"FROB")?].choose(rng).cloned().expect("one")
    } else {
        route.method.clone()
    };
    let mut builder = Request::builder().method(method.clone()).uri(&uri);
    let key = match rng.random_range(0..10) {
        0 => None,
        1 => Some("mk_madeupmadeupmadeupmadeupmadeupmadeupmadeup".to_owned()),
        2..=4 => keys.choose(rng).cloned(),
        _ => Some(KEY.to_owned()),
    };
    if let Some(key) = &key {
        builder = builder.header("x-api-key", key);
    }
    let schema = route.operation.pointer("/requestBody/content/application~1json/schema");
    let import = route.template.ends_with("/import");
    let (body, content_type) = if schema.is_none() && !import && rng.random_bool(0.9) {
        (Vec::new(), None)
    } else {
        let mut value = match schema {
            Some(schema) => generate(doc, schema, rng, 0),
            None => json!({"conversation_id": "c", "role": "user", "content": "imported"}),
        };
        for _ in 0..rng.random_range(0..3) {
            mutate(&mut value, rng);
        }
        let mut bytes =
            if import { format!("{value}\n{value}\n").into_bytes() } else { value.to_string().into_bytes() };
        match rng.random_range(0..20) {
            0 => bytes.truncate(rng.random_range(0..bytes.len().max(1))),
            1 => bytes = vec![0xff, 0xfe, b'{', 0x80],
            2 => bytes.clear(),
            3 if rng.random_bool(0.2) => bytes = vec![b' '; body_limit + 1],
            _ => {}
        }
        let content_type = match rng.random_range(0..12) {
            0 => Some("text/plain"),
            1 => None,
            2 => Some("application/json; charset=utf-16"),
            3 => Some("application/x-www-form-urlencoded"),
            _ if import => Some("application/x-ndjson"),
            _ => Some("application/json"),
        };
        (bytes, content_type)
    };
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let described = format!(
        "{method} {uri} key={} content-type={content_type:?} body={}",
        key.is_some(),
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    Ok(Case { request: builder.body(Body::from(body))?, described })
}

#[tokio::test]
async fn generated_requests_get_a_small_problem_and_never_a_5xx() -> anyhow::Result<()> {
    let app = App::start().await?;
    let doc = serde_json::to_value(gateway::openapi::ApiDoc::openapi())?;
    let routes = routes(&doc);
    assert!(routes.len() >= 30, "{} routes", routes.len());
    let mut keys = Vec::new();
    for (tenant, scopes) in [("acme", &["read", "write", "admin"][..]), ("acme", &["read"]), ("globex", &["write"])] {
        keys.push(app.tenant_key(tenant, scopes).await?);
    }
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = setting("MEMORY_FUZZ_CASES", 5_000);
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let router = gateway::router(app.state.clone());
    for n in 0..cases {
        let Case { request, described } = case(&doc, &routes, &keys, &mut rng, app.state.body_limit)?;
        let head = request.method() == Method::HEAD;
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        *statuses.entry(status.as_u16()).or_default() += 1;
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        // A live event stream does not end: opening it is the answer.
        let streams = response.headers().get("content-type").is_some_and(|v| v.as_bytes() == b"text/event-stream");
        if status.is_success() && streams {
            continue;
        }
        let limit = if status.is_success() { ANSWER_MAX } else { PROBLEM_MAX };
        let bytes = axum::body::to_bytes(response.into_body(), limit).await;
        let failure = match (&bytes, status) {
            (Err(_), _) => Some(format!("{status}: the answer is larger than {limit} bytes")),
            (_, s) if s.is_server_error() => {
                Some(format!("{status}: {}", String::from_utf8_lossy(bytes.as_ref().expect("read"))))
            }
            // A HEAD answer has no body by definition.
            (Ok(_), s) if !s.is_success() && head => (!problem).then(|| format!("{status} without a problem type")),
            (Ok(body), s) if !s.is_success() => {
                let parsed: Option<Value> = serde_json::from_slice(body).ok();
                let coded = parsed.as_ref().is_some_and(|p| p["code"].is_string() && p["status"] == s.as_u16());
                (!problem || !coded)
                    .then(|| format!("{status} without a problem and code: {}", String::from_utf8_lossy(body)))
            }
            _ => None,
        };
        if let Some(failure) = failure {
            failures.push(format!("case {n}: {described}\n  → {failure}"));
        }
    }
    println!("{cases} requests; statuses: {statuses:?}");
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );

    // The service is fine afterwards.
    let r = app.send(Method::GET, "/readyz", None, None).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app.post("/v1/messages?wait=embedded", &crate::harness::message("after-fuzz", "still standing")).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(app.search("after-fuzz", "still standing").await?.len(), 1);
    app.finish().await
}

#[tokio::test]
async fn generated_ingest_events_are_each_stored_or_dead_lettered_and_ingest_never_stalls() -> anyhow::Result<()> {
    use common::bus::Envelope;
    use common::contract::StreamKind;
    let app = App::without_workers(|_| {}).await?;
    let mut registry = prometheus_client::registry::Registry::with_prefix("memory");
    app.spawn_embedder_registered(&app.env.config, &mut registry).await?;
    app.spawn_searcher().await?;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let events = setting("MEMORY_FUZZ_EVENTS", 2_000);
    let subjects = &app.env.subjects;
    let prefix = subjects.prefix().to_owned();
    let mut accepted = 0u64;
    for n in 0..events {
        let tenant = ["fz-a", "fz-b", "fz~c", "bad/tenant", "x".repeat(70).as_str()]
            .choose(&mut rng)
            .map(|t| (*t).to_owned())
            .expect("one");
        let id = uuid::Uuid::now_v7();
        let mut payload = json!({"v": 1, "tenant_id": tenant.replace('~', "."), "conversation_id": "c",
            "role": "user", "content": format!("fuzz event {n}"), "message_id": id});
        for _ in 0..rng.random_range(0..3) {
            mutate(&mut payload, &mut rng);
        }
        let subject = match rng.random_range(0..6) {
            0 => format!("{prefix}.v1.ingest.{tenant}"),
            1 => format!("{prefix}.v1.ingest.{tenant}.{}", uuid::Uuid::now_v7()),
            2 => format!("{prefix}.v1.ingest.{tenant}.not-a-uuid"),
            _ => format!("{prefix}.v1.ingest.{tenant}.{id}"),
        };
        let mut bytes = payload.to_string().into_bytes();
        if rng.random_bool(0.05) {
            bytes = (0..rng.random_range(0..200)).map(|_| rng.random()).collect();
        }
        let mut envelope = Envelope::new(subject, bytes);
        for _ in 0..rng.random_range(0..3) {
            let (name, value) = match rng.random_range(0..5) {
                0 => ("Nats-Msg-Id", format!("fz/{}", rng.random_range(0..events))),
                1 => ("Nats-Expected-Stream", "SOMETHING_ELSE".to_owned()),
                2 => ("Memory-Reembed", rng.random_range(0..3).to_string()),
                3 => ("Memory-Request-Id", "é\u{7}".repeat(rng.random_range(1..200))),
                _ => ("X-Fuzz", "x".repeat(rng.random_range(0..4_000))),
            };
            envelope = envelope.with_header(name, common_header(&value));
        }
        // The server refuses some outright (an unknown expected stream, a payload over its limit).
        if let Ok(published) = app.env.deps.bus.publish(envelope, None).await
            && !published.duplicate
        {
            accepted += 1;
        }
    }
    // A valid message after the flood is stored: ingest never stalled.
    let r = app.post("/v1/messages?wait=stored", &crate::harness::message("control", "after the event flood")).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    app.env
        .eventually_within(Duration::from_secs(120), || async {
            let state = app.env.deps.bus.consumer_state(StreamKind::Ingest, "embedder").await?;
            anyhow::ensure!((state.pending, state.ack_pending) == (0, 0), "{state:?}");
            Ok(())
        })
        .await?;
    // Every accepted event is a row or a dead letter (ids are unique, so none folds into another;
    // a re-embed of a message never stored is dropped and counted apart).
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE tenant_id <> 'control'")
        .fetch_one(app.env.store.pool())
        .await?;
    let dead = app.env.deps.bus.stream_state(StreamKind::Dead).await?.last_sequence;
    let dropped = dropped_reembeds(&registry)?;
    println!(
        "{events} events, {accepted} accepted: {stored} stored, {dead} dead-lettered, {dropped} dropped re-embeds"
    );
    assert_eq!(stored as u64 + dead + dropped, accepted, "seed {seed}");
    app.finish().await
}

/// A header value as NATS takes it: no line breaks.
fn common_header(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

/// Re-embed events whose message was never stored: acked and dropped, neither row nor dead letter.
fn dropped_reembeds(registry: &prometheus_client::registry::Registry) -> anyhow::Result<u64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("memory_embedder_messages_total{") && l.contains("outcome=\"dropped\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
