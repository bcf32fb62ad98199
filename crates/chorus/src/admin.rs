//! `chorus status` and `chorus models`: the cluster as one coordinator sees it, read from its
//! admin port (`/chorus/workers`, `/chorus/ensembles`), as tables or as the JSON it answered.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use std::time::Duration;

/// Where to ask, and how to print.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The coordinator's admin port: `--admin-addr` of `chorus coordinator`, the `admin` address
    /// `chorus up` prints.
    #[arg(
        long,
        env = "CHORUS_ADMIN_URL",
        default_value = "http://127.0.0.1:8002"
    )]
    pub admin: String,

    /// Print the coordinator's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// How long the coordinator may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn get(admin: &str, path: &str) -> anyhow::Result<Value> {
    let base = if admin.contains("://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    };
    let url = format!("{base}{path}");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(TIMEOUT)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the coordinator's admin port at {url}: is --admin right?")
        })?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "{url} answered {status}: is {base} a Chorus coordinator's admin port (--admin-addr)?"
        );
    }
    response
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))
}

/// `chorus status`: readiness, workers, ensembles.
pub async fn status(args: AdminArgs) -> anyhow::Result<()> {
    let workers = get(&args.admin, "/chorus/workers").await?;
    let cluster = get(&args.admin, "/chorus/ensembles").await?;
    if args.json {
        let all = json!({
            "ready": cluster["ready"],
            "workers": workers["workers"],
            "routing": workers["routing"],
            "ensembles": cluster["ensembles"],
        });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    print!("{}", status_text(&workers, &cluster));
    Ok(())
}

/// `chorus models`: every model with its versions and replicas in rotation.
pub async fn models(args: AdminArgs) -> anyhow::Result<()> {
    let cluster = get(&args.admin, "/chorus/ensembles").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cluster["models"])?);
        return Ok(());
    }
    print!("{}", models_text(&cluster));
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn status_text(workers: &Value, cluster: &Value) -> String {
    let mut out = format!("ready: {}\n\n", yes_no(&cluster["ready"]));
    let worker_rows: Vec<Vec<String>> = workers["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                text(&w["worker_id"]),
                text(&w["addr"]),
                yes_no(&w["routable"]).to_string(),
                text(&w["outstanding"]),
                text(&w["latency_ewma_us"]),
                w["models"]
                    .as_array()
                    .map(|m| m.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "WORKER",
            "ADDRESS",
            "ROUTABLE",
            "OUTSTANDING",
            "LATENCY_US",
            "MODELS",
        ],
        &worker_rows,
    ));
    out.push('\n');
    let ensemble_rows: Vec<Vec<String>> = cluster["ensembles"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let members = e["members"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let live = members
                .iter()
                .filter(|m| m["replicas"].as_u64().unwrap_or(0) > 0)
                .count();
            vec![
                text(&e["name"]),
                yes_no(&e["ready"]).to_string(),
                format!(
                    "{live}/{} live, {} needed",
                    members.len(),
                    text(&e["min_members"])
                ),
                text(&e["combiner"]),
                format!("{} ms", text(&e["deadline_ms"])),
                members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}×{} ({} replicas)",
                            text(&m["model"]),
                            text(&m["weight"]),
                            text(&m["replicas"])
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ENSEMBLE",
            "READY",
            "QUORUM",
            "COMBINER",
            "DEADLINE",
            "MEMBERS (model×weight)",
        ],
        &ensemble_rows,
    ));
    out
}

fn models_text(cluster: &Value) -> String {
    let rows: Vec<Vec<String>> = cluster["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                text(&m["name"]),
                m["versions"]
                    .as_array()
                    .map(|v| v.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                text(&m["replicas"]),
                yes_no(&m["ready"]).to_string(),
            ]
        })
        .collect();
    table(&["MODEL", "VERSIONS", "REPLICAS", "READY"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_what_an_operator_asks_first() {
        let workers = json!({"workers": [{"worker_id": "w-1", "addr": "127.0.0.1:9000", "routable": true,
            "outstanding": 2, "latency_ewma_us": 310, "models": ["logreg@1", "svc@1"]}]});
        let cluster = json!({"ready": true, "ensembles": [{"name": "digits_soft", "ready": true,
            "min_members": 2, "combiner": "soft_vote", "deadline_ms": 1000,
            "members": [{"model": "logreg", "weight": 1.0, "replicas": 1},
                        {"model": "mlp", "weight": 2.0, "replicas": 0}]}],
            "models": [{"name": "logreg", "versions": ["1"], "replicas": 1, "ready": true}]});
        let status = status_text(&workers, &cluster);
        assert!(status.starts_with("ready: yes\n"), "{status}");
        assert!(status.contains("w-1     127.0.0.1:9000  yes"), "{status}");
        assert!(status.contains("1/2 live, 2 needed"), "{status}");
        assert!(status.contains("mlp×2.0 (0 replicas)"), "{status}");
        let models = models_text(&cluster);
        assert!(
            models.contains("logreg  1         1         yes"),
            "{models}"
        );
    }
}
