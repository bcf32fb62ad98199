//! API keys and admission over real processes, on both front doors: the 401/403 matrix, health
//! left open for probes, listings trimmed to what a key may use, a key's rate limit answered with
//! a fast 429 / RESOURCE_EXHAUSTED that says when to retry, and the operator endpoints only on
//! the admin port.

mod support;

use chorus_coordinator::access::digest_hex;
use serde_json::{Value, json};
use std::net::SocketAddr;
use support::grpc::{self, Code, Grpc, proto};
use support::*;

const OPS: &str = "ops-secret-0123456789";
const REPORTING: &str = "reporting-secret-0123456789";
const LIMITED: &str = "limited-secret-0123456789";

struct Setup {
    _workers: Vec<Proc>,
    _coordinator: Proc,
    http: Http,
    admin: Http,
    grpc: SocketAddr,
    _keys: tempfile::NamedTempFile,
}

fn setup() -> Setup {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        keys.path(),
        format!(
            r#"
[[key]]
id = "ops"
sha256 = "{}"

[[key]]
id = "reporting"
sha256 = "{}"
models = ["digits_soft"]

[[key]]
id = "limited"
sha256 = "{}"
rate_limit = 0.2
burst = 1
"#,
            digest_hex(OPS),
            digest_hex(REPORTING),
            digest_hex(LIMITED)
        ),
    )
    .unwrap();
    let workers: Vec<Proc> = PLACEMENT
        .iter()
        .map(|(id, models)| start_worker(id, models))
        .collect();
    let refs: Vec<&Proc> = workers.iter().collect();
    let flag = format!("--api-keys={}", keys.path().display());
    let (coordinator, http) = start_coordinator(&refs, &[&flag], "/v2/health/ready");
    Setup {
        admin: Http::new(admin_addr(&coordinator)),
        grpc: grpc_addr(&coordinator),
        _workers: workers,
        _coordinator: coordinator,
        http,
        _keys: keys,
    }
}

fn row() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}]})
}

fn infer(http: &Http, model: &str, auth: Option<(&str, String)>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(auth);
    http.post(
        &format!("/v2/models/{model}/infer"),
        &headers,
        row().to_string().into_bytes(),
    )
}

fn bearer(secret: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {secret}")))
}

fn get_with(http: &Http, path: &str, secret: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut request = client.get(format!("http://{}{path}", http.addr));
    if let Some(secret) = secret {
        request = request.header("x-api-key", secret);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn error_of(reply: &Reply) -> String {
    serde_json::from_slice::<Value>(&reply.body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string()
}

fn grpc_call(grpc: &Grpc, model: &str, secret: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(grpc::raw_request(model, &[vec![0.5; 64]]));
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    grpc.infer_with(request).map(drop)
}

#[test]
fn keys_decide_who_may_call_what_on_both_front_doors() {
    let s = setup();

    // REST: no key, a wrong key, a wrong scheme → 401 with a challenge and a JSON error.
    let none = infer(&s.http, "digits_soft", None);
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer realm=\"chorus\"");
    assert!(
        error_of(&none).contains("requires an API key"),
        "{}",
        error_of(&none)
    );
    assert_eq!(infer(&s.http, "digits_soft", bearer("nope")).status, 401);
    let basic = infer(
        &s.http,
        "digits_soft",
        Some(("authorization", "Basic eDp5".into())),
    );
    assert_eq!(basic.status, 401);
    assert!(error_of(&basic).contains("Bearer"), "{}", error_of(&basic));
    // Good keys; a key limited to digits_soft is refused mlp with 403.
    assert_eq!(infer(&s.http, "digits_soft", bearer(OPS)).status, 200);
    assert_eq!(infer(&s.http, "mlp", bearer(OPS)).status, 200);
    assert_eq!(infer(&s.http, "digits_soft", bearer(REPORTING)).status, 200);
    let x_api_key = infer(
        &s.http,
        "digits_soft",
        Some(("x-api-key", REPORTING.into())),
    );
    assert_eq!(x_api_key.status, 200);
    let denied = infer(&s.http, "mlp", bearer(REPORTING));
    assert_eq!(denied.status, 403);
    assert!(error_of(&denied).contains("'reporting' may not use model 'mlp'"));

    // Metadata needs a key too, and listings leave out what a key may not use.
    assert_eq!(get_with(&s.http, "/v2/models/mlp", None).0, 401);
    assert_eq!(get_with(&s.http, "/v2/models/mlp", Some(REPORTING)).0, 403);
    assert_eq!(
        get_with(&s.http, "/v2/models/digits_soft", Some(REPORTING)).0,
        200
    );
    assert_eq!(
        get_with(&s.http, "/v2/models/mlp/config", Some(REPORTING)).0,
        403
    );
    let (status, body) = get_with(&s.http, "/v2/models/stats", Some(REPORTING));
    assert_eq!(status, 200);
    let names: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["digits_soft"], "{body}");
    let (status, body) = get_with(&s.http, "/v1/models", Some(REPORTING));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"models":["digits_soft"]}"#)
    );
    // Health stays open for probes.
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/mlp/ready",
    ] {
        assert_eq!(get_with(&s.http, path, None).0, 200, "{path}");
    }

    // gRPC: the same decisions with the matching codes.
    let grpc = Grpc::connect(s.grpc);
    let code = |model, secret| grpc_call(&grpc, model, secret).err().map(|e| e.code());
    assert_eq!(code("digits_soft", None), Some(Code::Unauthenticated));
    assert_eq!(
        code("digits_soft", Some("nope")),
        Some(Code::Unauthenticated)
    );
    assert_eq!(code("digits_soft", Some(OPS)), None);
    assert_eq!(code("digits_soft", Some(REPORTING)), None);
    assert_eq!(code("mlp", Some(REPORTING)), Some(Code::PermissionDenied));
    let live = grpc.with(|mut c| async move { c.server_live(proto::ServerLiveRequest {}).await });
    assert!(live.unwrap().into_inner().live, "liveness needs no key");
    let metadata = grpc.with(|mut c| async move {
        c.model_metadata(proto::ModelMetadataRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
    });
    assert_eq!(metadata.unwrap_err().code(), Code::Unauthenticated);

    // The key id is counted; the secret never appears on the admin port.
    let (status, metrics) = s.admin.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"chorus_api_key_requests_total{key="reporting",outcome="permission_denied"}"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(REPORTING));
}

#[test]
fn a_key_over_its_rate_gets_a_fast_429_that_says_when_to_retry() {
    let s = setup();
    // rate 0.2/s with a burst of 1: the first call passes, the next is refused for ~5 s.
    assert_eq!(infer(&s.http, "digits_soft", bearer(LIMITED)).status, 200);
    let started = std::time::Instant::now();
    let refused = infer(&s.http, "digits_soft", bearer(LIMITED));
    assert_eq!(refused.status, 429);
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert!(error_of(&refused).contains("API key 'limited' is over its rate limit"));
    // Other keys are not affected.
    assert_eq!(infer(&s.http, "digits_soft", bearer(OPS)).status, 200);

    let grpc = Grpc::connect(s.grpc);
    let status = grpc_call(&grpc, "digits_soft", Some(LIMITED)).unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let wait_ms: u64 = status
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait_ms > 0 && wait_ms <= 5000, "{wait_ms}");

    let (_, metrics) = s.admin.get("/metrics");
    assert!(
        metrics.contains(r#"chorus_admission_rejections_total{reason="key_rate"} 2"#),
        "{metrics}"
    );
}

#[test]
fn operator_endpoints_are_on_the_admin_port_only() {
    let s = setup();
    for path in ["/metrics", "/chorus/workers"] {
        assert_eq!(
            get_with(&s.http, path, Some(OPS)).0,
            404,
            "{path} on the public port"
        );
        assert_eq!(s.admin.get(path).0, 200, "{path} on the admin port");
    }
}
