//! What a benchmark reports: one record per run (parameters and results), printed as a line when
//! the run ends, as a Markdown table at the end, and written as JSON with `--json-out`.

use super::args::Compression;
use super::open_loop::Pacing;
use super::plan::{Load, Target};
use super::procfs::{Interference, ProcessUsage, mib};
use super::stats::{Errors, Summary};
use serde::Serialize;
use std::collections::BTreeMap;

/// The whole benchmark, as written by `--json-out`.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub chorus_version: &'static str,
    /// The command line, for rerunning.
    pub command: Vec<String>,
    pub machine: Machine,
    /// `--spawn` only: the models each spawned worker serves, by worker name.
    pub workers: BTreeMap<String, Vec<String>>,
    pub runs: Vec<RunReport>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or_else(|| "unknown".into(), |(_, model)| model.trim().to_string()),
        }
    }
}

/// The 1-minute load average: other work on the machine skews a run.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One run: its exact parameters, then its results.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub label: String,
    pub target: Target,
    /// REST bodies' and answers' content coding (`none` unless `--compression`).
    pub compression: Compression,
    /// The infer URL (Chorus runs only).
    pub url: Option<String>,
    pub model: String,
    #[serde(flatten)]
    pub load: Load,
    pub rows: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Load-generator threads (Chorus runs only).
    pub client_threads: Option<u16>,
    /// Open loop only.
    pub max_outstanding: Option<usize>,
    pub timeout_s: f64,
    /// 1-minute load average just before the run.
    pub load_average: Option<f64>,
    pub results: Summary,
    pub errors: Errors,
    /// Open loop only.
    pub pacing: Option<Pacing>,
    /// Peak memory and CPU per request of the processes watched: the spawned cluster, `--watch-pid`
    /// processes, and this one (the load generator, or the floor).
    pub processes: Vec<ProcessUsage>,
    /// What the rest of the machine used meanwhile.
    pub interference: Option<Interference>,
}

impl RunReport {
    /// `chorus http json`, `chorus grpc binary`, `floor`.
    pub fn target_name(&self) -> String {
        match self.target {
            Target::Floor => "floor".into(),
            Target::Chorus { protocol, encoding } => match self.compression.token() {
                None => format!("chorus {} {}", protocol.as_str(), encoding.as_str()),
                Some(coding) => format!(
                    "chorus {} {}+{coding}",
                    protocol.as_str(),
                    encoding.as_str()
                ),
            },
        }
    }

    /// `c=8` or `2000/s`.
    pub fn load_name(&self) -> String {
        match self.load {
            Load::Closed { concurrency } => format!("c={concurrency}"),
            Load::Open { rate } => format!("{rate}/s"),
        }
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        let s = &self.results;
        let l = &s.latency_us;
        let mut line = format!(
            "{:<18} {:<8} rows={:<3} {:>9.0} req/s {:>10.0} rows/s  p50 {} p90 {} p99 {} p99.9 {} max {} ms  errors: {}",
            self.target_name(),
            self.load_name(),
            self.rows,
            s.requests_per_s,
            s.rows_per_s,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            self.errors.describe(),
        );
        if let Some(r) = &s.refused_latency_us {
            line.push_str(&format!(" (429 p50 {} p99 {} ms)", ms(r.p50), ms(r.p99)));
        }
        if let Some(p) = &self.pacing {
            line.push_str(&format!(
                "  sent {}/{} (lag p99 {} ms)",
                p.sent,
                p.scheduled,
                ms(p.lag_us_p99)
            ));
        }
        if let Some(i) = &self.interference {
            line.push_str(&format!(
                "\n      rest of the machine: {:.2} cores busy, {:.2} in interrupts, {:.2} stolen",
                i.other_cores, i.irq_cores, i.steal_cores
            ));
        }
        if !self.processes.is_empty() {
            line.push_str("\n      peak RSS: ");
            line.push_str(&memory_cell(&self.processes));
            line.push_str("\n      CPU µs/request: ");
            line.push_str(&cpu_cell(&self.processes));
        }
        line
    }
}

fn memory_cell(processes: &[ProcessUsage]) -> String {
    processes
        .iter()
        .map(|p| format!("{} {}", p.name, mib(p.peak_rss_kib)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_cell(processes: &[ProcessUsage]) -> String {
    processes
        .iter()
        .map(|p| match p.cpu_us_per_request {
            Some(us) => format!("{} {us:.0}", p.name),
            None => format!("{} -", p.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Microseconds as milliseconds with microsecond resolution.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The runs as a Markdown table.
pub fn markdown(runs: &[RunReport]) -> String {
    let mut out = String::from(
        "| label | target | load | rows | req/s | rows/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | peak RSS | CPU µs/request |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for r in runs {
        let s = &r.results;
        let l = &s.latency_us;
        let mut errors = r.errors.describe();
        if let Some(refused) = &s.refused_latency_us {
            errors.push_str(&format!(" (429 p99 {} ms)", ms(refused.p99)));
        }
        if let Some(p) = &r.pacing {
            errors.push_str(&format!(" (sent {}/{})", p.sent, p.scheduled));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            if r.label.is_empty() { "-" } else { &r.label },
            r.target_name(),
            r.load_name(),
            r.rows,
            s.requests_per_s,
            s.rows_per_s,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            errors,
            memory_cell(&r.processes),
            cpu_cell(&r.processes),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::{Compression, Encoding, Protocol};
    use crate::bench::stats::{Failure, Recorder};
    use serde_json::{Value, json};
    use std::time::Duration;

    fn run() -> RunReport {
        let mut r = Recorder::new();
        r.answered(Duration::from_micros(250), 32);
        r.answered(Duration::from_micros(750), 32);
        r.failed(Failure::Status(503));
        let (results, errors) = r.summary(Duration::from_secs(2));
        RunReport {
            label: "batching-off".into(),
            target: Target::Chorus {
                protocol: Protocol::Http,
                encoding: Encoding::Binary,
            },
            compression: Compression::None,
            url: Some("http://127.0.0.1:1/v2/models/m/infer".into()),
            model: "m".into(),
            load: Load::Closed { concurrency: 8 },
            rows: 32,
            duration_s: 2.0,
            warmup_s: 0.5,
            client_threads: Some(1),
            max_outstanding: None,
            timeout_s: 5.0,
            load_average: Some(0.5),
            results,
            errors,
            pacing: None,
            processes: vec![ProcessUsage {
                name: "coordinator".into(),
                pid: 7,
                peak_rss_kib: 20480,
                rss_kib: 10240,
                peak_since: "run",
                cpu_s: 0.5,
                cpu_us_per_request: Some(250.0),
            }],
            interference: Some(Interference {
                other_cores: 0.25,
                irq_cores: 0.1,
                steal_cores: 0.0,
            }),
        }
    }

    #[test]
    fn json_shape_has_parameters_and_results() {
        let v: Value = serde_json::to_value(run()).unwrap();
        assert_eq!(
            v["target"],
            json!({"kind": "chorus", "protocol": "http", "encoding": "binary"})
        );
        assert_eq!(v["mode"], "closed");
        assert_eq!(v["concurrency"], 8);
        assert_eq!(v["rows"], 32);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["results"]["requests"], 2);
        assert_eq!(v["results"]["rows"], 64);
        assert_eq!(v["results"]["requests_per_s"], 1.0);
        assert_eq!(v["results"]["rows_per_s"], 32.0);
        for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v["results"]["latency_us"][key].is_number(), "{key}");
        }
        assert_eq!(v["errors"]["by_status"]["503"], 1);
        assert_eq!(v["processes"][0]["peak_rss_kib"], 20480);
        assert_eq!(v["processes"][0]["cpu_us_per_request"], 250.0);
        assert_eq!(v["pacing"], Value::Null);
        assert_eq!(v["interference"]["other_cores"], 0.25);

        let open = RunReport {
            load: Load::Open { rate: 2000.0 },
            target: Target::Floor,
            ..run()
        };
        let v: Value = serde_json::to_value(open).unwrap();
        assert_eq!(v["mode"], "open");
        assert_eq!(v["rate"], 2000.0);
        assert_eq!(v["target"], json!({"kind": "floor"}));
    }

    #[test]
    fn line_and_table() {
        let r = run();
        let line = r.line();
        assert!(line.starts_with("chorus http binary c=8 "), "{line}");
        assert!(line.contains("p50 0.250"), "{line}");
        assert!(line.contains("errors: 503×1"), "{line}");
        assert!(line.contains("coordinator 20.0 MiB"), "{line}");
        assert!(line.contains("coordinator 250"), "{line}");
        assert!(line.contains("0.25 cores busy"), "{line}");
        let table = markdown(&[r]);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].matches('|').count(), rows[2].matches('|').count());
        assert!(rows[2].starts_with("| batching-off | chorus http binary | c=8 | 32 | 1 | 32 |"));
    }

    #[test]
    fn machine_is_described() {
        let m = Machine::this();
        assert!(m.nproc >= 1);
        assert!(!m.cpu_model.is_empty());
        assert_eq!(ms(1234), "1.234");
    }
}
