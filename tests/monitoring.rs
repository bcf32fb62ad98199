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
    let rule_file: rules::RuleFile = rules::parse(RULES, &read(RULES));
    exprs.extend(rule_file.rules().map(|rule| rule.expr.clone()));

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
    let plain: rules::RuleFile = rules::parse(RULES, &read(RULES));
    let k8s: rules::PrometheusRule = rules::parse(PROMETHEUS_RULE, &read(PROMETHEUS_RULE));
    assert_eq!(
        (k8s.api_version.as_str(), k8s.kind.as_str()),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        "{PROMETHEUS_RULE}: apiVersion and kind"
    );
    assert!(
        k8s.spec == plain,
        "{PROMETHEUS_RULE}'s spec differs from {RULES}: run deploy/monitoring/sync.sh"
    );
    // Byte for byte, comments included: the script that writes it agrees.
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
    let rule_file: rules::RuleFile = rules::parse(RULES, &read(RULES));
    let alerts: Vec<_> = rule_file.alerts().collect();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    let mut problems = Vec::new();
    let given = |text: &Option<String>| text.as_deref().is_some_and(|t| !t.trim().is_empty());
    for (alert, rule) in &alerts {
        let annotations = &rule.annotations;
        for (key, present) in [
            ("for", rule.for_.is_some()),
            ("labels.severity", rule.labels.severity.is_some()),
            ("annotations.summary", given(&annotations.summary)),
            ("annotations.description", given(&annotations.description)),
            ("annotations.runbook", given(&annotations.runbook)),
        ] {
            if !present {
                problems.push(format!("{alert} has no `{key}`"));
            }
        }
        let runbook = annotations.runbook.as_deref().unwrap_or_default();
        match runbook.strip_prefix("docs/operations.md#") {
            Some(anchor) if anchors.contains(anchor) => {}
            _ => problems.push(format!(
                "{alert}: runbook `{runbook}` is not a section of docs/operations.md"
            )),
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The Prometheus rules file, and the Prometheus Operator's PrometheusRule that carries it, as
/// typed values: the fields this test checks are named, the rest of a rule's `labels` and
/// `annotations` kept as maps. promtool checks everything else about the file.
mod rules {
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct RuleFile {
        pub groups: Vec<Group>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    pub struct Group {
        pub name: String,
        pub rules: Vec<Rule>,
    }

    /// One alerting (`alert`) or recording (`record`) rule.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct Rule {
        pub alert: Option<String>,
        pub record: Option<String>,
        pub expr: String,
        #[serde(rename = "for")]
        pub for_: Option<String>,
        pub keep_firing_for: Option<String>,
        #[serde(default)]
        pub labels: Labels,
        #[serde(default)]
        pub annotations: Annotations,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    pub struct Labels {
        pub severity: Option<Severity>,
        #[serde(flatten)]
        pub other: BTreeMap<String, String>,
    }

    /// The severities Alertmanager routes on (docs/operations.md's alert table): a misspelt one
    /// would route nowhere, so it does not deserialize.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    pub enum Severity {
        Critical,
        Warning,
        Info,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    pub struct Annotations {
        pub summary: Option<String>,
        pub description: Option<String>,
        pub runbook: Option<String>,
        #[serde(flatten)]
        pub other: BTreeMap<String, String>,
    }

    /// A `monitoring.coreos.com/v1` PrometheusRule: its `spec` is a rules file.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub spec: RuleFile,
    }

    pub fn parse<T: serde::de::DeserializeOwned>(path: &str, yaml: &str) -> T {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    impl RuleFile {
        pub fn rules(&self) -> impl Iterator<Item = &Rule> {
            self.groups.iter().flat_map(|group| &group.rules)
        }

        /// The alerting rules, with their names.
        pub fn alerts(&self) -> impl Iterator<Item = (&str, &Rule)> {
            self.rules()
                .filter_map(|rule| Some((rule.alert.as_deref()?, rule)))
        }
    }
}

/// The metric and label names a PromQL expression uses, and the names a Prometheus text
/// exposition has. Expressions are parsed by `promql-parser` (which refuses unknown functions
/// and ill-typed arguments); the walk over its AST collects the metric and the matcher labels
/// of each selector and the labels of `by`/`without`/`on`/`ignoring`/`group_*` clauses.
mod promql {
    use promql_parser::label::{Labels, METRIC_NAME, MatchOp};
    use promql_parser::parser::{self, Expr, VectorSelector};
    use std::collections::{BTreeMap, BTreeSet};

    /// Labels Prometheus adds to every series it scrapes.
    const TARGET_LABELS: [&str; 2] = ["instance", "job"];

    /// Grafana's interval variables, which stand where PromQL wants a duration: Grafana replaces
    /// them before Prometheus sees the query, so do we. (Value variables such as `$model` sit
    /// inside quoted matcher values, which PromQL reads as they are.)
    const GRAFANA_DURATIONS: [&str; 6] = [
        "${__rate_interval}",
        "$__rate_interval",
        "${__interval}",
        "$__interval",
        "${__range}",
        "$__range",
    ];

    /// What one expression names.
    #[derive(Debug, Default, PartialEq)]
    pub struct Names {
        /// Each metric selector: the metric and the labels its matchers name.
        pub selectors: Vec<(String, Vec<String>)>,
        /// Labels of grouping clauses.
        pub grouping: BTreeSet<String>,
    }

    impl Names {
        fn group(&mut self, labels: &Labels) {
            self.grouping.extend(labels.labels.iter().cloned());
        }

        fn selector(&mut self, selector: &VectorSelector) -> Result<(), String> {
            let matchers = selector
                .matchers
                .matchers
                .iter()
                .chain(selector.matchers.or_matchers.iter().flatten());
            let name = selector.name.clone().or_else(|| {
                matchers
                    .clone()
                    .find(|m| m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal))
                    .map(|m| m.value.clone())
            });
            let Some(name) = name else {
                return Err(format!("`{selector}` is a selector without a metric name"));
            };
            let mut labels: Vec<String> = matchers
                .filter(|m| m.name != METRIC_NAME)
                .map(|m| m.name.clone())
                .collect();
            labels.dedup();
            self.selectors.push((name, labels));
            Ok(())
        }

        fn walk(&mut self, expr: &Expr) -> Result<(), String> {
            match expr {
                Expr::Aggregate(aggregate) => {
                    if let Some(modifier) = &aggregate.modifier {
                        self.group(modifier.labels());
                    }
                    if let Some(param) = &aggregate.param {
                        self.walk(param)?;
                    }
                    self.walk(&aggregate.expr)
                }
                Expr::Binary(binary) => {
                    if let Some(modifier) = &binary.modifier {
                        if let Some(matching) = &modifier.matching {
                            self.group(matching.labels());
                        }
                        if let Some(include) = modifier.card.labels() {
                            self.group(include);
                        }
                    }
                    self.walk(&binary.lhs)?;
                    self.walk(&binary.rhs)
                }
                Expr::Unary(unary) => self.walk(&unary.expr),
                Expr::Paren(paren) => self.walk(&paren.expr),
                Expr::Subquery(subquery) => self.walk(&subquery.expr),
                Expr::Call(call) => call.args.args.iter().try_for_each(|arg| self.walk(arg)),
                Expr::VectorSelector(selector) => self.selector(selector),
                Expr::MatrixSelector(matrix) => self.selector(&matrix.vs),
                Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
                // Only built by code that extends the parser, never by `parse`.
                Expr::Extension(_) => Err("an extension node".into()),
            }
        }
    }

    /// The names `expr` uses; the parser's error for what is not PromQL (an unknown function
    /// included).
    pub fn names(expr: &str) -> Result<Names, String> {
        let expr = GRAFANA_DURATIONS
            .iter()
            .fold(expr.to_string(), |expr, var| expr.replace(var, "5m"));
        let ast = parser::parse(&expr)?;
        let mut names = Names::default();
        names.walk(&ast)?;
        Ok(names)
    }

    /// The names of a Grafana `label_values(selector, label)` variable query: a Grafana form, not
    /// PromQL, so only its selector goes to the parser.
    pub fn label_values(query: &str) -> Option<Names> {
        let args = query
            .trim()
            .strip_prefix("label_values(")?
            .strip_suffix(')')?;
        let (selector, label) = args.rsplit_once(',')?;
        let label = label.trim();
        let is_label = label.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_label {
            return None;
        }
        let mut names = names(selector).ok()?;
        names.grouping.insert(label.to_string());
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
            let unknown = names("rat(chorus_requests_total[5m])").unwrap_err();
            assert!(
                unknown.contains("unknown function with name 'rat'"),
                "{unknown}"
            );
            // Arguments of the wrong type too: `rate` takes a range.
            assert!(names("rate(chorus_requests_total)").is_err());
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
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          x\n            / y\n        for: 1m\n        labels:\n          severity: warning\n      - alert: B\n        # why\n        expr: z == 1\n        annotations:\n          runbook: docs/operations.md#b\n      - record: c:z\n        expr: sum(z)\n";
    let file: rules::RuleFile = rules::parse("inline", yaml);
    let got: Vec<_> = file
        .rules()
        .map(|r| {
            let name = r.alert.as_deref().or(r.record.as_deref());
            (name, r.expr.as_str(), r.annotations.runbook.as_deref())
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some("A"), "x\n  / y\n", None),
            (Some("B"), "z == 1", Some("docs/operations.md#b")),
            (Some("c:z"), "sum(z)", None),
        ]
    );
    assert_eq!(file.alerts().count(), 2);
    assert_eq!(file.groups[0].rules[0].for_.as_deref(), Some("1m"));
    assert_eq!(
        file.groups[0].rules[0].labels.severity,
        Some(rules::Severity::Warning)
    );
    // A misspelt severity or rule key is refused, naming what is wrong.
    let misspelt = |from: &str, to: &str| {
        serde_norway::from_str::<rules::RuleFile>(&yaml.replace(from, to))
            .unwrap_err()
            .to_string()
    };
    let severity = misspelt("severity: warning", "severity: warnnig");
    assert!(severity.contains("warnnig"), "{severity}");
    let key = misspelt("annotations:", "anotations:");
    assert!(key.contains("anotations"), "{key}");
}
