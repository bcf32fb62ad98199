//! The dashboard and the alert rules in deploy/monitoring cannot drift from the code: every
//! metric and label their PromQL names is exported by a real cluster (coordinator admin port and
//! worker `--metrics-addr`), promtool accepts the rules and their unit tests, the Kubernetes
//! PrometheusRule holds exactly the plain rules file, and every alert has its severity,
//! annotations and a runbook section in docs/operations.md.

mod support;

use chorus_coordinator::access::digest_hex;
use promql::Exposition;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

const DASHBOARD: &str = "deploy/monitoring/grafana/chorus.json";
const RULES: &str = "deploy/monitoring/prometheus/chorus-rules.yml";
const RULE_TESTS: &str = "deploy/monitoring/prometheus/chorus-rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/monitoring/k8s/prometheusrule.yaml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One ensemble that degrades instead of failing and takes feedback, one with a rate limit that
/// refuses its second request: so the lazily created series (degraded answers, member failures,
/// admission refusals, accuracy against feedback) exist when the test scrapes.
const SPECS: &str = r#"
version = 1

[[ensemble]]
name = "pair"
combiner = "soft_vote"
deadline_ms = 2000
min_members = 1
min_member_accuracy = 0.1
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"

[[ensemble]]
name = "metered"
combiner = "soft_vote"
deadline_ms = 2000
min_members = 1
rate_limit = 0.01
burst = 1
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"
"#;

fn row() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}]})
}

/// The one API key of the test cluster: with a key file, requests are also counted by key.
const KEY: &str = "monitoring-secret-0123456789";

fn infer(http: &Http, model: &str) -> Reply {
    http.post(
        &format!("/v2/models/{model}/infer"),
        &[
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {KEY}")),
        ],
        row().to_string().into_bytes(),
    )
}

fn scrape(addr: &str) -> String {
    let (status, text) = Http::new(addr.parse().expect("metrics address")).get("/metrics");
    assert_eq!(status, 200, "GET http://{addr}/metrics");
    text
}

/// What a small real cluster exports once it has served, refused, failed and degraded requests.
fn scrape_a_cluster() -> Exposition {
    let specs = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(specs.path(), SPECS).unwrap();
    let keys = tempfile::NamedTempFile::new().unwrap();
    let key_file = format!("[[key]]\nid = \"ops\"\nsha256 = \"{}\"\n", digest_hex(KEY));
    std::fs::write(keys.path(), key_file).unwrap();
    let logreg = start_worker_with(
        "w-logreg",
        &["logreg"],
        &["--metrics-addr=127.0.0.1:0".to_string()],
    );
    let mut mlp = start_worker("w-mlp", &["mlp"]);
    let coordinator = spawn_coordinator(&[
        format!("--ensembles={}", specs.path().display()),
        format!("--api-keys={}", keys.path().display()),
        format!(
            "--worker={},{}",
            logreg.field("rpc_addr"),
            mlp.field("rpc_addr")
        ),
        "--ping-interval-ms=200".into(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("readiness", Duration::from_secs(60), || {
        (http.get("/v2/health/ready").0 == 200).then_some(())
    });

    let answered = infer(&http, "pair");
    answered.expect_status(200);
    // Feedback on it: the accuracy gauges and the alert counter exist from then on.
    let feedback = json!({"id": answered.json()["id"], "label": 0});
    http.post(
        "/v2/models/pair/feedback",
        &[
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {KEY}")),
        ],
        feedback.to_string().into_bytes(),
    )
    .expect_status(200);
    infer(&http, "logreg").expect_status(200);
    infer(&http, "no_such_model").expect_status(404);
    infer(&http, "metered").expect_status(200);
    infer(&http, "metered").expect_status(429);
    // One member gone: `pair` still answers, degraded, and the member counts as failed.
    mlp.signal(libc::SIGKILL);
    mlp.wait_exit(Duration::from_secs(10));
    wait_until("a degraded answer", Duration::from_secs(30), || {
        let reply = infer(&http, "pair");
        (reply.status == 200 && reply.json()["parameters"]["degraded"] == true).then_some(())
    });

    let mut exposition = Exposition::parse(&scrape(&coordinator.field("admin_addr")));
    exposition.merge(Exposition::parse(&scrape(&logreg.field("metrics_addr"))));
    exposition
}

/// Every PromQL expression of the dashboard (panel targets, nested rows included) and the
/// `label_values(metric, label)` queries of its variables.
fn dashboard_queries(dashboard: &Value) -> (Vec<String>, Vec<String>) {
    fn walk(value: &Value, exprs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(targets)) = map.get("targets") {
                    for target in targets {
                        let expr = target["expr"].as_str().expect("every target has an expr");
                        exprs.push(expr.to_string());
                    }
                }
                map.values().for_each(|v| walk(v, exprs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| v["definition"].as_str().expect("definition").to_string())
        .collect();
    (exprs, variables)
}

#[test]
fn every_metric_and_label_the_dashboard_and_rules_use_is_exported_by_a_real_cluster() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let (mut exprs, variables) = dashboard_queries(&dashboard);
    assert!(
        exprs.len() > 20,
        "the dashboard has {} queries",
        exprs.len()
    );
    let alerts = rules::parse(&read(RULES));
    exprs.extend(alerts.iter().map(|rule| rule.expr.clone()));

    let exposition = scrape_a_cluster();
    let mut problems = Vec::new();
    for expr in &exprs {
        match promql::names(expr) {
            Ok(names) => problems.extend(
                exposition
                    .check(&names)
                    .into_iter()
                    .map(|p| format!("{p} in `{expr}`")),
            ),
            Err(e) => problems.push(format!("cannot read `{expr}`: {e}")),
        }
    }
    for query in &variables {
        match promql::label_values(query) {
            Some(names) => problems.extend(exposition.check(&names)),
            None => problems.push(format!(
                "variable query `{query}` is not label_values(m, l)"
            )),
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is missing: `bash scripts/install-deps.sh` installs it (Debian package prometheus)"
            )
        })
}

fn run_promtool(args: &[&str], dir: &Path) {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = repo_root().join("deploy/monitoring/prometheus");
    let file = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    run_promtool(&["check", "rules", &file(RULES)], &dir);
    run_promtool(&["test", "rules", &file(RULE_TESTS)], &dir);
}

#[test]
fn the_prometheus_rule_holds_exactly_the_plain_rules_file() {
    let plain = read(RULES);
    let source = &plain[plain
        .find("\ngroups:")
        .expect("`groups:` in the rules file")
        + 1..];
    let k8s = read(PROMETHEUS_RULE);
    let (header, spec) = k8s.split_once("\nspec:\n").expect("a `spec:` line");
    assert!(header.contains("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"));
    let unindented: Vec<&str> = spec
        .lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect();
    let source: Vec<&str> = source.lines().collect();
    assert!(
        unindented == source,
        "{PROMETHEUS_RULE} differs from {RULES}: run deploy/monitoring/sync.sh"
    );
    // The script that writes it agrees.
    let status = Command::new("bash")
        .arg(repo_root().join("deploy/monitoring/sync.sh"))
        .arg("--check")
        .status()
        .expect("bash runs");
    assert!(status.success(), "deploy/monitoring/sync.sh --check failed");
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let anchors: BTreeSet<String> = read("docs/operations.md")
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let alerts = rules::parse(&read(RULES));
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    let mut problems = Vec::new();
    for rule in &alerts {
        for key in ["for", "severity", "summary", "description", "runbook"] {
            if !rule.keys.contains(key) {
                problems.push(format!("{} has no `{key}`", rule.alert));
            }
        }
        let runbook = rule.runbook.as_deref().unwrap_or_default();
        match runbook.strip_prefix("docs/operations.md#") {
            Some(anchor) if anchors.contains(anchor) => {}
            _ => problems.push(format!(
                "{}: runbook `{runbook}` is not a section of docs/operations.md",
                rule.alert
            )),
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The alerting rules of a rules file, read line by line: the file's layout is ours (one
/// `- alert:` per rule, `expr:` on one line or as a `|` block), and promtool checks the YAML.
mod rules {
    use std::collections::BTreeSet;

    pub struct Rule {
        pub alert: String,
        pub expr: String,
        /// Every `key:` in the rule (`for`, `severity`, `summary`, …).
        pub keys: BTreeSet<String>,
        pub runbook: Option<String>,
    }

    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }

    pub fn parse(yaml: &str) -> Vec<Rule> {
        let lines: Vec<&str> = yaml.lines().collect();
        let mut rules: Vec<Rule> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start().trim_start_matches("- ");
            i += 1;
            if trimmed.starts_with('#') {
                continue;
            }
            let Some((key, value)) = trimmed.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if key == "alert" {
                rules.push(Rule {
                    alert: value.to_string(),
                    expr: String::new(),
                    keys: BTreeSet::new(),
                    runbook: None,
                });
                continue;
            }
            let Some(rule) = rules.last_mut() else {
                continue;
            };
            rule.keys.insert(key.to_string());
            match key {
                "expr" if value.starts_with(['|', '>']) => {
                    let mut block = Vec::new();
                    while i < lines.len()
                        && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
                    {
                        block.push(lines[i].trim());
                        i += 1;
                    }
                    rule.expr = block.join("\n");
                }
                "expr" => rule.expr = value.trim_matches(['"', '\'']).to_string(),
                "runbook" => rule.runbook = Some(value.trim_matches(['"', '\'']).to_string()),
                _ => {}
            }
        }
        rules
    }
}

/// The metric and label names a PromQL expression uses, and the names a Prometheus text
/// exposition has. A small lexer, not a parser: strings and `[…]` ranges are skipped, a word
/// before `(` must be a known function, grouping clauses (`by`, `without`, `on`, `ignoring`,
/// `group_left`, `group_right`) list labels, and any other word is a metric whose `{…}`
/// matchers name labels.
mod promql {
    use std::collections::{BTreeMap, BTreeSet};

    /// Labels Prometheus adds to every series it scrapes.
    const TARGET_LABELS: [&str; 2] = ["instance", "job"];

    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];

    const FUNCTIONS: &[&str] = &[
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "holt_winters",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
    ];

    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];

    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];

    /// What one expression names.
    #[derive(Debug, Default, PartialEq)]
    pub struct Names {
        /// Each metric selector: the metric and the labels its matchers name.
        pub selectors: Vec<(String, Vec<String>)>,
        /// Labels of grouping clauses.
        pub grouping: BTreeSet<String>,
    }

    struct Lexer {
        chars: Vec<char>,
        at: usize,
    }

    impl Lexer {
        fn peek(&self) -> Option<char> {
            self.chars.get(self.at).copied()
        }

        fn skip_spaces(&mut self) {
            while self.peek().is_some_and(char::is_whitespace) {
                self.at += 1;
            }
        }

        fn word(&mut self) -> String {
            let start = self.at;
            while self
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                self.at += 1;
            }
            self.chars[start..self.at].iter().collect()
        }

        /// Skips the string starting here, escapes included.
        fn string(&mut self) -> Result<(), String> {
            let quote = self.chars[self.at];
            self.at += 1;
            while let Some(c) = self.peek() {
                self.at += 1;
                if c == '\\' && quote != '`' {
                    self.at += 1;
                } else if c == quote {
                    return Ok(());
                }
            }
            Err("unterminated string".into())
        }

        /// Skips a `[range]` or `[range:step]`.
        fn range(&mut self) -> Result<(), String> {
            match self.chars[self.at..].iter().position(|&c| c == ']') {
                Some(end) => {
                    self.at += end + 1;
                    Ok(())
                }
                None => Err("unterminated `[`".into()),
            }
        }

        /// The names of a `(label, …)` list.
        fn label_list(&mut self) -> Result<Vec<String>, String> {
            self.at += 1;
            let mut labels = Vec::new();
            loop {
                self.skip_spaces();
                match self.peek() {
                    Some(')') => {
                        self.at += 1;
                        return Ok(labels);
                    }
                    Some(',') => self.at += 1,
                    Some(c) if c.is_ascii_alphabetic() || c == '_' => labels.push(self.word()),
                    other => return Err(format!("unexpected {other:?} in a label list")),
                }
            }
        }

        /// The label names of a `{label op "value", …}` selector.
        fn matchers(&mut self) -> Result<Vec<String>, String> {
            self.at += 1;
            let mut labels = Vec::new();
            loop {
                self.skip_spaces();
                match self.peek() {
                    Some('}') => {
                        self.at += 1;
                        return Ok(labels);
                    }
                    Some(',') => self.at += 1,
                    Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                        labels.push(self.word());
                        self.skip_spaces();
                        while self.peek().is_some_and(|c| matches!(c, '=' | '!' | '~')) {
                            self.at += 1;
                        }
                        self.skip_spaces();
                        match self.peek() {
                            Some('"' | '\'' | '`') => self.string()?,
                            other => return Err(format!("expected a quoted value, not {other:?}")),
                        }
                    }
                    other => return Err(format!("unexpected {other:?} in a selector")),
                }
            }
        }
    }

    /// The names `expr` uses; an error for what this lexer cannot read or an unknown function.
    pub fn names(expr: &str) -> Result<Names, String> {
        let mut lexer = Lexer {
            chars: expr.chars().collect(),
            at: 0,
        };
        let mut names = Names::default();
        loop {
            lexer.skip_spaces();
            let Some(c) = lexer.peek() else {
                return Ok(names);
            };
            match c {
                '"' | '\'' | '`' => lexer.string()?,
                '[' => lexer.range()?,
                '{' => return Err("a selector without a metric name".into()),
                // A Grafana variable ($model, $__rate_interval).
                '$' => {
                    lexer.at += 1;
                    lexer.word();
                }
                // A number or a duration (`offset 5m`).
                c if c.is_ascii_digit() || c == '.' => {
                    while lexer
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                    {
                        lexer.at += 1;
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let word = lexer.word();
                    lexer.skip_spaces();
                    let call = lexer.peek() == Some('(');
                    if GROUPING.contains(&word.as_str()) {
                        if call {
                            names.grouping.extend(lexer.label_list()?);
                        } else if !word.starts_with("group_") {
                            return Err(format!("`{word}` without a label list"));
                        }
                    } else if KEYWORDS.contains(&word.as_str())
                        || AGGREGATIONS.contains(&word.as_str())
                    {
                        // Operators, and aggregations (whose `by (…)` may come before the `(`).
                    } else if call {
                        if !FUNCTIONS.contains(&word.as_str()) {
                            return Err(format!("unknown function `{word}`"));
                        }
                    } else {
                        let labels = if lexer.peek() == Some('{') {
                            lexer.matchers()?
                        } else {
                            Vec::new()
                        };
                        names.selectors.push((word, labels));
                    }
                }
                _ => lexer.at += 1,
            }
        }
    }

    /// The names of a Grafana `label_values(metric, label)` variable query.
    pub fn label_values(query: &str) -> Option<Names> {
        let args = query
            .trim()
            .strip_prefix("label_values(")?
            .strip_suffix(')')?;
        let (metric, label) = args.split_once(',')?;
        let mut names = names(metric).ok()?;
        names.grouping.insert(label.trim().to_string());
        Some(names)
    }

    /// Sample names (`_total`, `_bucket` … as exposed) and the label names each carries.
    #[derive(Debug, Default)]
    pub struct Exposition {
        series: BTreeMap<String, BTreeSet<String>>,
    }

    impl Exposition {
        /// Reads Prometheus text or OpenMetrics text.
        pub fn parse(text: &str) -> Exposition {
            let mut exposition = Exposition::default();
            for line in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = exposition
                    .series
                    .entry(line[..end].to_string())
                    .or_default();
                if line[end..].starts_with('{') {
                    let mut rest = &line[end + 1..];
                    while let Some((key, value)) = rest.split_once("=\"") {
                        labels.insert(key.trim_start_matches(',').to_string());
                        // The value ends at the first quote not escaped by a backslash.
                        let mut escaped = false;
                        let close = value
                            .char_indices()
                            .find(|&(_, c)| {
                                let end = c == '"' && !escaped;
                                escaped = c == '\\' && !escaped;
                                end
                            })
                            .map_or(value.len(), |(i, _)| i);
                        rest = &value[(close + 1).min(value.len())..];
                        if rest.starts_with('}') {
                            break;
                        }
                    }
                }
            }
            exposition
        }

        pub fn merge(&mut self, other: Exposition) {
            for (name, labels) in other.series {
                self.series.entry(name).or_default().extend(labels);
            }
        }

        /// What `names` uses that this exposition lacks.
        pub fn check(&self, names: &Names) -> Vec<String> {
            let mut problems = Vec::new();
            let mut known: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
            for (metric, labels) in &names.selectors {
                let Some(exported) = self.series.get(metric) else {
                    problems.push(format!("no metric `{metric}`"));
                    continue;
                };
                known.extend(exported.iter().map(String::as_str));
                for label in labels {
                    if !exported.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                        problems.push(format!("`{metric}` has no label `{label}`"));
                    }
                }
            }
            for label in &names.grouping {
                if !known.contains(label.as_str()) {
                    problems.push(format!("no metric of the expression has label `{label}`"));
                }
            }
            problems
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SCRAPE: &str = "\
# HELP chorus_requests_total Infer requests.
# TYPE chorus_requests_total counter
chorus_requests_total{model=\"digits\",protocol=\"http\",outcome=\"ok\"} 2
chorus_requests_total{model=\"a \\\"quoted\\\", name\",protocol=\"grpc\",outcome=\"ok\"} 1
chorus_request_duration_seconds_bucket{model=\"digits\",protocol=\"http\",le=\"0.1\"} 2
chorus_membership_stale 0
# EOF
";

        fn problems(expr: &str) -> Vec<String> {
            Exposition::parse(SCRAPE).check(&names(expr).unwrap())
        }

        #[test]
        fn names_come_from_selectors_matchers_and_grouping_clauses() {
            let found = names(
                r#"histogram_quantile(0.99, sum by (model, le) (rate(chorus_request_duration_seconds_bucket{model=~"$model", protocol!="a}b"}[$__rate_interval] offset 5m)))
                  / on (model) group_left sum without (protocol) (chorus_requests_total) > bool 0"#,
            )
            .unwrap();
            assert_eq!(
                found.selectors,
                [
                    (
                        "chorus_request_duration_seconds_bucket".to_string(),
                        vec!["model".to_string(), "protocol".to_string()]
                    ),
                    ("chorus_requests_total".to_string(), vec![]),
                ]
            );
            assert_eq!(
                found.grouping.into_iter().collect::<Vec<_>>(),
                ["le", "model", "protocol"]
            );
        }

        #[test]
        fn what_the_exposition_has_passes() {
            assert_eq!(
                problems(
                    r#"sum by (model, le, instance) (rate(chorus_request_duration_seconds_bucket{protocol="http"}[5m])) + max(chorus_membership_stale)"#
                ),
                Vec::<String>::new()
            );
            let labels = &Exposition::parse(SCRAPE).series["chorus_requests_total"];
            assert_eq!(
                labels.iter().collect::<Vec<_>>(),
                ["model", "outcome", "protocol"]
            );
        }

        #[test]
        fn a_misspelled_metric_is_caught() {
            assert_eq!(
                problems("sum(rate(chorus_request_total[5m]))"),
                ["no metric `chorus_request_total`"]
            );
            // A histogram's family name is not a series: the suffix must be there.
            assert_eq!(
                problems("rate(chorus_request_duration_seconds[5m])"),
                ["no metric `chorus_request_duration_seconds`"]
            );
        }

        #[test]
        fn a_misspelled_label_is_caught_in_matchers_and_grouping() {
            assert_eq!(
                problems(r#"chorus_requests_total{outcom="ok"}"#),
                ["`chorus_requests_total` has no label `outcom`"]
            );
            assert_eq!(
                problems("sum by (modle) (chorus_requests_total)"),
                ["no metric of the expression has label `modle`"]
            );
            // `le` belongs to the buckets only.
            assert_eq!(
                problems("sum by (le) (chorus_requests_total)"),
                ["no metric of the expression has label `le`"]
            );
        }

        #[test]
        fn a_misspelled_function_and_unreadable_expressions_are_refused() {
            assert_eq!(
                names("rat(chorus_requests_total[5m])").unwrap_err(),
                "unknown function `rat`"
            );
            assert!(names(r#"chorus_requests_total{model="x}"#).is_err());
            assert!(names("sum by model (chorus_requests_total)").is_err());
        }

        #[test]
        fn grafana_label_values_queries_are_read() {
            let found = label_values("label_values(chorus_requests_total, model)").unwrap();
            assert!(Exposition::parse(SCRAPE).check(&found).is_empty());
            let typo = label_values("label_values(chorus_requests_total, modle)").unwrap();
            assert_eq!(Exposition::parse(SCRAPE).check(&typo).len(), 1);
        }
    }
}

#[test]
fn the_rules_reader_finds_block_and_inline_expressions() {
    let rules = rules::parse(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          x\n            / y\n        for: 1m\n      - alert: B\n        # why\n        expr: z == 1\n        annotations:\n          runbook: docs/operations.md#b\n",
    );
    let got: Vec<_> = rules
        .iter()
        .map(|r| (r.alert.as_str(), r.expr.as_str(), r.runbook.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("A", "x\n/ y", None),
            ("B", "z == 1", Some("docs/operations.md#b"))
        ]
    );
    assert!(rules[0].keys.contains("for"));
}
