//! The live dashboard on the admin port: `GET /dashboard` (a page, its stylesheet and script,
//! all compiled into the binary) and `GET /chorus/traffic`, the last minutes of traffic the page
//! polls beside `/chorus/workers` and `/chorus/ensembles`.
//!
//! The page loads nothing from elsewhere and runs under a `self`-only Content-Security-Policy.
//! Traffic comes from a ring of per-second samples of the coordinator's own metrics, taken by a
//! background task ([`sampler`]), so serving a request costs nothing more than it did.

mod sampler;
mod scrape;
mod window;

use super::App;
use axum::Json;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use window::Window;

const PAGE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// Only this origin's own files and endpoints: no inline script or style, no frames, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The spans the page shows.
const LAST_MINUTE: Duration = Duration::from_secs(60);
const LAST_FIVE_MINUTES: Duration = Duration::from_secs(300);

/// The dashboard's routes, for the admin router to merge. Starts the sampler, which stops when
/// these routes are dropped.
pub fn routes(app: &App) -> Router<App> {
    let window = sampler::start(Arc::clone(app.metrics()));
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/dashboard.js", get(script))
        .route("/chorus/traffic", get(move || traffic(Arc::clone(&window))))
}

/// An embedded file, never cached (a coordinator upgrade must not leave an old script running
/// against new endpoints).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /chorus/traffic`: totals, the last minute and last five minutes, the per-second series
/// and each model's last minute.
async fn traffic(window: Arc<Mutex<Window>>) -> Response {
    let body = traffic_json(&window.lock().expect("dashboard window lock"));
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Json(body),
    )
        .into_response()
}

fn traffic_json(window: &Window) -> Value {
    let (sampled_at_ms, inflight) = window
        .newest()
        .map_or((0, 0), |(at, counts)| (at, counts.inflight));
    json!({
        "sampled_at_ms": sampled_at_ms,
        "sample_every_ms": sampler::SAMPLE_EVERY.as_millis() as u64,
        "inflight": inflight,
        "last_minute": window.summary(LAST_MINUTE),
        "last_5_minutes": window.summary(LAST_FIVE_MINUTES),
        "series": window.series(),
        "models": window.models(LAST_MINUTE),
    })
}

#[cfg(test)]
mod tests {
    use crate::http::{admin_router, router};
    use crate::testing::{Behaviour, FakeWorker, Harness};
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tower::ServiceExt;

    use crate::testing::ONE_MEMBER_ENSEMBLE as SPECS;

    async fn get(app: axum::Router, path: &str) -> (StatusCode, header::HeaderMap, String) {
        let reply = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = reply.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_a_strict_policy_on_the_admin_port_only() {
        let worker = FakeWorker::new("w-1", &[("m", Behaviour::answer(&[0.2, 0.8]))]);
        let harness = Harness::start(SPECS, &[worker]).await;
        let app = Arc::new(harness.infer);
        let admin = admin_router(Arc::clone(&app));
        for (path, content_type, needle) in [
            ("/dashboard", "text/html; charset=utf-8", "dashboard.js"),
            (
                "/dashboard/dashboard.css",
                "text/css; charset=utf-8",
                "table",
            ),
            (
                "/dashboard/dashboard.js",
                "text/javascript; charset=utf-8",
                "/chorus/traffic",
            ),
        ] {
            let (status, headers, body) = get(admin.clone(), path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
            assert!(body.contains(needle), "{path}: {needle} missing");
            // Nothing from elsewhere: the only URL is SVG's namespace, which is not fetched.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path}"
            );
        }
        let (status, _, _) = get(router(Arc::clone(&app)), "/dashboard").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "not on the public port");
        let (status, _, _) = get(router(app), "/chorus/traffic").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn traffic_counts_requests_once_sampled() {
        let worker = FakeWorker::new("w-1", &[("m", Behaviour::answer(&[0.2, 0.8]))]);
        let harness = Harness::start(SPECS, &[worker]).await;
        let app = Arc::new(harness.infer);
        let admin = admin_router(Arc::clone(&app));
        let label = app.metrics().model_label("pair", || true);
        for _ in 0..3 {
            app.metrics()
                .request_started(label.clone(), crate::infer::Protocol::Http)
                .finish(None);
        }
        let total = |body: &str| {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            json["last_minute"]["requests"].as_u64().unwrap()
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (status, headers, body) = get(admin.clone(), "/chorus/traffic").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            if total(&body) == 3 {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                let pair = json["models"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "pair")
                    .unwrap();
                assert_eq!(pair["requests_total"], 3);
                assert!(json["last_minute"]["p50_ms"].as_f64().unwrap() >= 0.0);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never sampled: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
