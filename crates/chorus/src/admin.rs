//! `chorus status` and `chorus models`: the cluster as one coordinator sees it, read from its
//! admin port (`/chorus/workers`, `/chorus/ensembles`), as tables or as the JSON it answered.
//! `chorus drain`: takes one worker out of rotation through the same port
//! (`POST /chorus/workers/{id}/drain`), and with `--wait` follows it until it has no calls in
//! flight.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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

/// `chorus drain`'s arguments.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The worker to drain, as `chorus status` lists it: its `--worker-id` (with a static
    /// `--worker` list, its address works too).
    pub worker: String,

    #[command(flatten)]
    pub admin: AdminArgs,

    /// Wait until the worker has no calls in flight (and the coordinator none outstanding to
    /// it) before returning.
    #[arg(long)]
    pub wait: bool,

    /// How long `--wait` waits, in seconds; past it, `chorus drain` exits non-zero (the worker
    /// stays drained).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
}

/// How long the coordinator may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a drain request may take: the worker marks its etcd record before it answers, and
/// the coordinator gives it 15 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How often `--wait` asks.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// `http://` added to a bare `host:port`.
pub(crate) fn base_url(admin: &str) -> String {
    if admin.contains("://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    }
}

async fn get(admin: &str, path: &str) -> anyhow::Result<Value> {
    let base = base_url(admin);
    let url = format!("{base}{path}");
    let response = send(reqwest::Client::new().get(&url).timeout(TIMEOUT), &url).await?;
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

/// Sends a drain request (`POST` to drain, `GET` for progress) and returns the coordinator's
/// JSON; a refusal comes back as the coordinator's own message.
async fn drain_call(
    method: reqwest::Method,
    admin: &str,
    worker: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let base = base_url(admin);
    // The id is one path segment: escape what would break it.
    let id: String = worker
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    let url = format!("{base}/chorus/workers/{id}/drain");
    let response = send(
        reqwest::Client::new()
            .request(method, &url)
            .timeout(timeout),
        &url,
    )
    .await?;
    let status = response.status();
    let body: Option<Value> = response.json().await.ok();
    if status.is_success() {
        return body.with_context(|| format!("{url} did not answer JSON"));
    }
    match body.as_ref().and_then(|b| b["error"].as_str()) {
        Some(message) => bail!("cannot drain '{worker}': {message} ({status})"),
        None => bail!(
            "{url} answered {status}: is {base} the admin port (--admin-addr) of a Chorus coordinator that knows `chorus drain`?"
        ),
    }
}

/// `chorus drain`: takes the worker out of rotation on every coordinator; with `--wait`, returns
/// once it has no calls in flight.
pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let admin = &args.admin.admin;
    let mut answer = drain_call(reqwest::Method::POST, admin, &args.worker, DRAIN_TIMEOUT).await?;
    if answer["record"] == "failed" {
        eprintln!(
            "warning: the worker could not mark its etcd record draining ({}); coordinators still learn it from its pings. Run `chorus drain` again to retry.",
            text(&answer["record_error"])
        );
    }
    if !args.admin.json {
        println!("{}", drain_text(&answer));
    }
    if args.wait && answer["drained"] != true {
        let progress = wait_drained(&args, &answer).await?;
        for key in ["state", "in_flight", "drained"] {
            answer[key] = progress[key].clone();
        }
        if !args.admin.json {
            println!("{}", drain_text(&answer));
        }
    }
    if args.admin.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}

/// Polls until the worker says it is draining with nothing in flight and this coordinator has
/// nothing outstanding to it, or `--timeout` passes.
async fn wait_drained(args: &DrainArgs, answer: &Value) -> anyhow::Result<Value> {
    let admin = &args.admin.admin;
    let limit = Duration::from_secs(args.timeout);
    let give_up = Instant::now() + limit;
    let listed_as = text(&answer["worker_id"]);
    loop {
        let last = match drain_call(reqwest::Method::GET, admin, &args.worker, TIMEOUT).await {
            Ok(progress) if progress["drained"] == true => {
                // The coordinator's own calls to it, which the worker may not have seen yet.
                let workers = get(admin, "/chorus/workers").await?;
                let entry = workers["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|w| w["worker_id"] == listed_as.as_str());
                let settled = entry
                    .is_none_or(|w| w["draining"] == true && w["outstanding"].as_u64() == Some(0));
                if settled {
                    return Ok(progress);
                }
                format!(
                    "the coordinator still has {} calls outstanding to it",
                    text(&entry.map_or(Value::Null, |w| w["outstanding"].clone()))
                )
            }
            Ok(progress) => format!(
                "{} calls in flight, state {}",
                text(&progress["in_flight"]),
                text(&progress["state"])
            ),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= give_up {
            bail!(
                "worker '{}' did not finish draining within {} s (--timeout): {last}. It still takes no new work; wait longer, or stop it anyway",
                args.worker,
                limit.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// One line about the drain, for an operator.
fn drain_text(answer: &Value) -> String {
    let worker = text(&answer["worker"]);
    let addr = text(&answer["addr"]);
    if answer["drained"] == true {
        return format!(
            "worker {worker} ({addr}) is drained: no calls in flight, no new work; it keeps running until you stop it"
        );
    }
    let record = match answer["record"].as_str() {
        Some("marked") => {
            "; its etcd record says draining, so every coordinator stops routing to it"
        }
        Some("static") => "; coordinators learn it from its pings (no etcd)",
        _ => "",
    };
    format!(
        "worker {worker} ({addr}) is {}, {} calls in flight{record}",
        text(&answer["state"]),
        text(&answer["in_flight"])
    )
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
    out.push_str(&online_weights_text(cluster));
    out
}

/// The learnt weights of ensembles with `weights = "online"` (members in spec order), or
/// nothing when none has them.
fn online_weights_text(cluster: &Value) -> String {
    let rows: Vec<Vec<String>> = cluster["ensembles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["online_weights"].is_object())
        .map(|e| {
            let online = &e["online_weights"];
            let weights = e["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let model = text(&m["model"]);
                    match online["weights"][&model].as_f64() {
                        Some(w) => format!("{model}={w:.4}"),
                        None => format!("{model}=-"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                text(&e["name"]),
                yes_no(&online["frozen"]).to_string(),
                text(&online["rows"]),
                weights,
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{}",
        table(
            &[
                "ONLINE ENSEMBLE",
                "FROZEN",
                "ROWS",
                "MEMBER WEIGHTS (learnt)"
            ],
            &rows
        )
    )
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

/// Sends one request to the admin port; an unreachable port says which flag to check.
async fn send(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<reqwest::Response> {
    request.send().await.with_context(|| {
        format!("cannot reach the coordinator's admin port at {url}: is --admin right?")
    })
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
        assert!(!status.contains("ONLINE"), "no online ensemble: {status}");
        let models = models_text(&cluster);
        assert!(
            models.contains("logreg  1         1         yes"),
            "{models}"
        );
    }

    #[test]
    fn status_shows_learnt_weights_and_the_freeze() {
        let workers = json!({"workers": []});
        let cluster = json!({"ready": true, "ensembles": [
            {"name": "digits_online", "ready": true, "min_members": 1, "combiner": "soft_vote",
             "deadline_ms": 500,
             "members": [{"model": "rf", "weight": 1.0, "replicas": 1},
                         {"model": "bad", "weight": 1.0, "replicas": 1}],
             "online_weights": {"weights": {"bad": 0.05, "rf": 1.95}, "frozen": true,
                                "rows": 1000, "generation": 7}},
            {"name": "digits_static", "ready": true, "min_members": 1, "combiner": "soft_vote",
             "deadline_ms": 500, "members": [], "online_weights": null}]});
        let status = status_text(&workers, &cluster);
        let section = status
            .split_once("ONLINE ENSEMBLE")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no online weights section: {status}"));
        assert!(
            section.contains("digits_online    yes     1000  rf=1.9500, bad=0.0500"),
            "{status}"
        );
        assert!(!section.contains("digits_static"), "{status}");
    }

    #[test]
    fn drain_lines_say_where_the_drain_stands() {
        let mut answer = json!({"worker": "w-a", "addr": "10.0.0.7:9000", "state": "draining",
            "in_flight": 4, "drained": false, "record": "marked"});
        let line = drain_text(&answer);
        assert!(
            line.starts_with("worker w-a (10.0.0.7:9000) is draining, 4 calls in flight"),
            "{line}"
        );
        assert!(line.contains("every coordinator stops routing"), "{line}");
        answer["in_flight"] = json!(0);
        answer["drained"] = json!(true);
        let line = drain_text(&answer);
        assert!(
            line.contains("is drained") && line.contains("until you stop it"),
            "{line}"
        );
    }
}
