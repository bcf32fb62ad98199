//! `chorus reload`: asks workers to rescan their model repositories (`POST /admin/reload` on
//! each worker's `--metrics-addr` listener, the same as sending it SIGHUP) and prints what each
//! loaded, reloaded, removed and could not load. Workers are asked one after another, so that a
//! fleet does not load the same new model all at once.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use std::time::Duration;

/// Which workers, and how to print.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// A worker's HTTP listener: its `--metrics-addr` (`host:port` or a URL). Repeat it to
    /// reload several workers, one after another.
    #[arg(long = "worker", value_name = "HOST:PORT", required = true)]
    pub workers: Vec<String>,

    /// Print each worker's JSON report instead of text.
    #[arg(long)]
    pub json: bool,

    /// How long one worker may take to answer, in seconds: it answers once the new models are
    /// loaded and warm.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

/// Reloads every worker named; fails (after asking them all) if any could not reload all of
/// its repository.
pub async fn run(args: ReloadArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for worker in &args.workers {
        match reload(&client, worker, Duration::from_secs(args.timeout.max(1))).await {
            Ok((report, problem)) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report_text(worker, &report));
                }
                if let Some(problem) = problem {
                    failures.push(format!("{worker}: {problem}"));
                }
            }
            Err(e) => {
                eprintln!("{worker}: {e:#}");
                failures.push(format!("{worker}: {e:#}"));
            }
        }
    }
    if !failures.is_empty() {
        bail!("reload incomplete: {}", failures.join("; "));
    }
    Ok(())
}

/// One worker's report, and what went wrong if it did not reload everything.
async fn reload(
    client: &reqwest::Client,
    worker: &str,
    timeout: Duration,
) -> anyhow::Result<(Value, Option<String>)> {
    let url = format!("{}/admin/reload", crate::admin::base_url(worker));
    let response = client
        .post(&url)
        .timeout(timeout)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach {url}: is it the worker's --metrics-addr, and is the worker up?")
        })?;
    let status = response.status();
    let body: Option<Value> = response.json().await.ok();
    let Some(body) = body else {
        bail!("{url} answered {status} without JSON: is it a Chorus worker's --metrics-addr?");
    };
    let problem = (!status.is_success()).then(|| match body["error"].as_str() {
        Some(message) => format!("{message} ({status})"),
        None => format!("{url} answered {status}"),
    });
    Ok((body, problem))
}

/// `name@version, …` of a report's list, or `-`.
fn versions(list: &Value) -> String {
    let names: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{}@{}",
                v["model"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

fn report_text(worker: &str, report: &Value) -> String {
    if report.get("models").is_none() {
        // Refused whole: only an error.
        return format!(
            "{worker}: nothing changed: {}\n",
            report["error"].as_str().unwrap_or("no report")
        );
    }
    let mut out = format!(
        "{worker}: reloaded in {} ms\n  loaded:    {}\n  reloaded:  {}\n  removed:   {}\n  unchanged: {}\n  serving:   {}\n",
        report["elapsed_ms"],
        versions(&report["loaded"]),
        versions(&report["reloaded"]),
        versions(&report["removed"]),
        report["unchanged"],
        versions(&report["models"]),
    );
    for failure in report["failed"].as_array().into_iter().flatten() {
        let what = match failure["version"].as_str() {
            Some(v) => format!("{}@{v}", failure["model"].as_str().unwrap_or("?")),
            None => failure["model"].as_str().unwrap_or("?").to_string(),
        };
        out.push_str(&format!(
            "  FAILED:    {what}: {} (serves as before)\n",
            failure["error"].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_names_what_changed_and_what_failed() {
        let report = json!({"loaded": [{"model": "m", "version": "2"}], "reloaded": [],
            "removed": [{"model": "m", "version": "1"}], "unchanged": 3,
            "failed": [{"model": "bad", "version": "1", "error": "not an onnx file"}],
            "models": [{"model": "m", "version": "2"}], "record": "static", "elapsed_ms": 12});
        let text = report_text("w:8002", &report);
        assert!(text.starts_with("w:8002: reloaded in 12 ms\n"), "{text}");
        assert!(text.contains("loaded:    m@2\n"), "{text}");
        assert!(text.contains("reloaded:  -\n"), "{text}");
        assert!(text.contains("removed:   m@1\n"), "{text}");
        assert!(
            text.contains("FAILED:    bad@1: not an onnx file"),
            "{text}"
        );
        let refused = report_text("w:8002", &json!({"error": "no models"}));
        assert_eq!(refused, "w:8002: nothing changed: no models\n");
    }
}
