//! Ensemble specs: the TOML file format, parsed and validated once, with errors that name the field.

use crate::admission::{EnsembleLimits, RateLimit};
use crate::prediction_log::LogPolicy;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

pub mod roles;
pub mod versions;

/// The only spec-file version this coordinator reads.
pub const SPEC_VERSION: u32 = 1;

/// Most class names an ensemble's `labels` may list.
const MAX_LABELS: usize = 1 << 20;

/// Longest `deadline_ms` a spec may set: one hour, the longest deadline an RPC may carry
/// (`chorus_common::transport::MAX_RPC_DEADLINE`). Beyond it the number is a mistake: the member
/// calls would carry the clamped hour anyway.
const MAX_DEADLINE_MS: u64 = 3_600_000;

/// Largest `max_inflight` a spec may set: more requests than a coordinator has connections.
const MAX_INFLIGHT: usize = 1_000_000;

/// Re-exported so that `spec::CombinerKind` keeps naming the one home in `combine/kind.rs`.
pub use crate::combine::CombinerKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    version: u32,
    #[serde(default)]
    ensemble: Vec<RawEnsemble>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnsemble {
    name: String,
    #[serde(default)]
    description: String,
    combiner: CombinerKind,
    deadline_ms: u64,
    min_members: Option<usize>,
    member_output: Option<String>,
    meta_model: Option<String>,
    meta_version: Option<String>,
    labels: Option<Vec<String>>,
    max_inflight: Option<usize>,
    rate_limit: Option<f64>,
    burst: Option<u32>,
    log_sample_rate: Option<f64>,
    log_inputs: Option<bool>,
    weights: Option<WeightMode>,
    learning_rate: Option<f64>,
    weight_floor: Option<f64>,
    feedback: Option<bool>,
    accuracy_window: Option<usize>,
    min_member_accuracy: Option<f64>,
    /// P(class 1) above which a binary ensemble answers class 1 (spec/roles.rs).
    threshold: Option<f64>,
    #[serde(default)]
    member: Vec<RawMember>,
    /// This table's version of the ensemble (docs/configuration.md#versions-traffic-and-shadow).
    version: Option<versions::RawVersion>,
    /// How unversioned requests are split over the name's versions: weights by version.
    traffic: Option<std::collections::BTreeMap<String, u32>>,
    /// A version that gets a copy of the split traffic, compared and never returned.
    shadow: Option<versions::RawVersion>,
}

/// `weights = "static"` (the members' `weight`s, the default) or `"online"` (learnt from
/// feedback, starting from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WeightMode {
    Static,
    Online,
}

/// How feedback moves an ensemble's member weights (`weights = "online"`; docs/data.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineWeights {
    /// η of the multiplicative-weights update `w ← w·exp(−η·loss)`.
    pub learning_rate: f64,
    /// Lowest weight a member may fall to, relative to the mean weight (which is 1).
    pub floor: f64,
}

impl OnlineWeights {
    pub const DEFAULT_LEARNING_RATE: f64 = 0.1;
    pub const DEFAULT_FLOOR: f64 = 0.05;
    /// Above this one feedback row can all but zero a member: a typo, not a rate.
    pub const MAX_LEARNING_RATE: f64 = 10.0;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    model: String,
    version: Option<String>,
    #[serde(default = "one")]
    weight: f64,
    /// Ensemble input name → this member's input name (spec/roles.rs).
    #[serde(default)]
    input_map: std::collections::BTreeMap<String, String>,
    /// This member's output name → the role the combiner reads (spec/roles.rs).
    #[serde(default)]
    output_map: std::collections::BTreeMap<String, String>,
}

fn one() -> f64 {
    1.0
}

/// One member model of an ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub model: String,
    pub version: Option<String>,
    pub weight: f64,
    /// Ensemble input name → this member's input name; empty: the same names.
    pub input_map: std::collections::BTreeMap<String, String>,
    /// This member's output name → role (`label`, `probabilities`, `score`); empty: the
    /// member's outputs carry the role names.
    pub output_map: std::collections::BTreeMap<String, String>,
}

/// A validated ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpec {
    pub name: String,
    pub description: String,
    pub combiner: CombinerKind,
    pub deadline: Duration,
    /// Members that must answer for a result (quorum).
    pub min_members: usize,
    /// The member output the combiner reads.
    pub member_output: String,
    /// Fusion's meta-model and its optional pinned version.
    pub meta_model: Option<(String, Option<String>)>,
    pub members: Vec<Member>,
    /// Class names by index for the classification extension; `None` takes them from the
    /// members (the meta-model for fusion).
    pub labels: Option<Vec<String>>,
    /// Admission limits of its own (`max_inflight`, `rate_limit`, `burst`); none by default.
    pub limits: EnsembleLimits,
    /// What the prediction log keeps of its answers (`log_sample_rate`, `log_inputs`), when
    /// `--prediction-log` is on.
    pub log: LogPolicy,
    /// Member weights learnt from feedback (`weights = "online"`); `None`: the static weights.
    pub online: Option<OnlineWeights>,
    /// Whether its answers are kept for feedback, and how accuracy is tracked from it
    /// (`feedback = true`, implied by `weights = "online"` and `min_member_accuracy`); `None`:
    /// nothing is kept and feedback is refused.
    pub feedback: Option<FeedbackPolicy>,
    /// Binary ensembles: the combined P(class 1) above which the label is 1 (`threshold`);
    /// `None`: argmax, which is 0.5 for probabilities that sum to 1.
    pub threshold: Option<f64>,
    /// Its version (`version`; [`versions::DEFAULT_VERSION`] when absent). Several specs may
    /// share a name with distinct versions (spec/versions.rs).
    pub version: String,
    /// The traffic split and shadow of every version of its name, on the one table of the name
    /// that carries them.
    pub routing: Option<versions::Routing>,
}

/// What feedback measures of an ensemble (docs/data.md#accuracy-against-feedback).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackPolicy {
    /// Feedback rows each member's accuracy is measured over (the newest ones).
    pub accuracy_window: usize,
    /// A member whose windowed accuracy falls below this is reported (metric and log).
    pub min_member_accuracy: Option<f64>,
}

impl FeedbackPolicy {
    pub const DEFAULT_ACCURACY_WINDOW: usize = 500;
    /// A window of bits per member: past this it is a data set, not a health signal.
    pub const MAX_ACCURACY_WINDOW: usize = 100_000;
}

/// Why a spec file was refused; each message names the file position or field to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read ensemble spec file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("ensemble spec file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("ensemble spec file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<Vec<EnsembleSpec>, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates spec text; `origin` names it in errors (a path, or an etcd key).
pub fn parse(text: &str, origin: &str) -> Result<Vec<EnsembleSpec>, SpecError> {
    let file: SpecFile = toml::from_str(text).map_err(|e| SpecError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| SpecError::Invalid {
        path: origin.to_string(),
        message,
    };
    if file.version != SPEC_VERSION {
        return Err(invalid(format!(
            "`version = {}` is not supported; this coordinator reads `version = {SPEC_VERSION}`",
            file.version
        )));
    }
    let mut specs = Vec::with_capacity(file.ensemble.len());
    for raw in file.ensemble {
        specs.push(validate(raw).map_err(invalid)?);
    }
    // Names, versions, splits and shadows are checked across the file's tables.
    versions::check(&specs).map_err(invalid)?;
    Ok(specs)
}

fn validate(raw: RawEnsemble) -> Result<EnsembleSpec, String> {
    let name = raw.name;
    let at = |field: &str| format!("ensemble '{name}': `{field}`");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!(
            "ensemble name '{name}' must be non-empty and use only letters, digits, '_', '-' and '.'"
        ));
    }
    if raw.member.is_empty() {
        return Err(format!(
            "ensemble '{name}' has no members: add at least one [[ensemble.member]] table"
        ));
    }
    if raw.deadline_ms == 0 || raw.deadline_ms > MAX_DEADLINE_MS {
        return Err(format!(
            "{} is {}, but it must be between 1 and {MAX_DEADLINE_MS} (one hour)",
            at("deadline_ms"),
            raw.deadline_ms
        ));
    }
    let min_members = raw.min_members.unwrap_or(raw.member.len());
    if min_members == 0 || min_members > raw.member.len() {
        return Err(format!(
            "{} is {min_members}, but it must be between 1 and the member count ({})",
            at("min_members"),
            raw.member.len()
        ));
    }
    for (i, m) in raw.member.iter().enumerate() {
        if m.model.is_empty() {
            return Err(format!(
                "ensemble '{name}': member {i} has an empty `model`"
            ));
        }
        if !m.weight.is_finite() || m.weight <= 0.0 {
            return Err(format!(
                "ensemble '{name}': member '{}' has `weight = {}`; weights must be finite and greater than 0",
                m.model, m.weight
            ));
        }
        if raw.member[..i]
            .iter()
            .any(|o| o.model == m.model && o.version == m.version)
        {
            return Err(format!(
                "ensemble '{name}': member '{}' is listed twice; list each model version once and use `weight` instead",
                m.model
            ));
        }
        roles::check_maps(&name, &m.model, &m.input_map, &m.output_map)?;
    }
    let threshold = roles::threshold(&name, raw.combiner, raw.threshold)?;
    let member_output = raw
        .member_output
        .or_else(|| raw.combiner.default_member_output().map(str::to_string))
        .ok_or_else(|| {
            format!(
                "{} is required for the {} combiner: name the member output to combine",
                at("member_output"),
                raw.combiner.as_str()
            )
        })?;
    if raw.meta_version.is_some() && raw.combiner != CombinerKind::Fusion {
        return Err(format!(
            "{} only applies to the fusion combiner, not {}",
            at("meta_version"),
            raw.combiner.as_str()
        ));
    }
    let meta_model = match (raw.combiner, raw.meta_model) {
        (CombinerKind::Fusion, Some(model)) => Some((model, raw.meta_version)),
        (CombinerKind::Fusion, None) => {
            return Err(format!(
                "{} is required for the fusion combiner: name the stacking model",
                at("meta_model")
            ));
        }
        (kind, Some(_)) => {
            return Err(format!(
                "{} only applies to the fusion combiner, not {}",
                at("meta_model"),
                kind.as_str()
            ));
        }
        (_, None) => None,
    };
    if raw.labels.as_ref().is_some_and(|l| l.len() > MAX_LABELS) {
        return Err(format!(
            "{} lists more than {MAX_LABELS} class names",
            at("labels")
        ));
    }
    if raw.max_inflight.is_some_and(|n| n == 0 || n > MAX_INFLIGHT) {
        return Err(format!(
            "{} is {}, but it must be between 1 and {MAX_INFLIGHT} (leave it out for no limit)",
            at("max_inflight"),
            raw.max_inflight.unwrap_or_default()
        ));
    }
    match (raw.rate_limit, raw.burst) {
        (None, Some(_)) => return Err(format!("{} needs a `rate_limit`", at("burst"))),
        (Some(rate), burst) => {
            RateLimit::new(rate, burst).map_err(|e| format!("ensemble '{name}': {e}"))?;
        }
        (None, None) => {}
    }
    let online = online_weights(
        &name,
        raw.combiner,
        raw.weights,
        raw.learning_rate,
        raw.weight_floor,
    )?;
    let log = log_policy(&name, raw.log_sample_rate, raw.log_inputs)?;
    let feedback = feedback_policy(
        &name,
        raw.combiner,
        online.is_some(),
        raw.feedback,
        raw.accuracy_window,
        raw.min_member_accuracy,
    )?;
    let (version, routing) = versions::of_table(&name, raw.version, raw.traffic, raw.shadow)?;
    Ok(EnsembleSpec {
        threshold,
        version,
        routing,
        log,
        online,
        feedback,
        limits: EnsembleLimits {
            max_inflight: raw.max_inflight,
            rate_limit: raw.rate_limit,
            burst: raw.burst,
        },
        labels: raw.labels,
        description: raw.description,
        combiner: raw.combiner,
        deadline: Duration::from_millis(raw.deadline_ms),
        min_members,
        member_output,
        meta_model,
        members: raw
            .member
            .into_iter()
            .map(|m| Member {
                model: m.model,
                version: m.version,
                weight: m.weight,
                input_map: m.input_map,
                output_map: m.output_map,
            })
            .collect(),
        name,
    })
}

/// The `weights`, `learning_rate` and `weight_floor` fields, checked together.
fn online_weights(
    name: &str,
    combiner: CombinerKind,
    mode: Option<WeightMode>,
    learning_rate: Option<f64>,
    floor: Option<f64>,
) -> Result<Option<OnlineWeights>, String> {
    if mode != Some(WeightMode::Online) {
        if learning_rate.is_some() || floor.is_some() {
            return Err(format!(
                "ensemble '{name}': `learning_rate` and `weight_floor` only apply with `weights = \"online\"`"
            ));
        }
        return Ok(None);
    }
    // Only the voting combiners read weights and name a class each row can be scored on.
    if !matches!(combiner, CombinerKind::SoftVote | CombinerKind::HardVote) {
        return Err(format!(
            "ensemble '{name}': `weights = \"online\"` needs the soft_vote or hard_vote combiner, not {}",
            combiner.as_str()
        ));
    }
    let learning_rate = learning_rate.unwrap_or(OnlineWeights::DEFAULT_LEARNING_RATE);
    if !(learning_rate > 0.0 && learning_rate <= OnlineWeights::MAX_LEARNING_RATE) {
        return Err(format!(
            "ensemble '{name}': `learning_rate = {learning_rate}` must be greater than 0 and at most {}",
            OnlineWeights::MAX_LEARNING_RATE
        ));
    }
    let floor = floor.unwrap_or(OnlineWeights::DEFAULT_FLOOR);
    // Above 0: the combiners refuse a zero weight, and a member at 0 could never recover.
    if !(floor > 0.0 && floor < 1.0) {
        return Err(format!(
            "ensemble '{name}': `weight_floor = {floor}` must be greater than 0 and below 1 (it is relative to the mean weight, 1)"
        ));
    }
    Ok(Some(OnlineWeights {
        learning_rate,
        floor,
    }))
}

/// The `feedback`, `accuracy_window` and `min_member_accuracy` fields, checked together:
/// feedback is kept when asked for, or when online weights or an accuracy alert need it.
fn feedback_policy(
    name: &str,
    combiner: CombinerKind,
    online: bool,
    feedback: Option<bool>,
    window: Option<usize>,
    min_accuracy: Option<f64>,
) -> Result<Option<FeedbackPolicy>, String> {
    let implied = online || min_accuracy.is_some() || window.is_some();
    match feedback {
        Some(false) if implied => {
            return Err(format!(
                "ensemble '{name}': `feedback = false`, but `weights = \"online\"`, `accuracy_window` and `min_member_accuracy` need feedback; remove one or the other"
            ));
        }
        Some(false) => return Ok(None),
        None if !implied => return Ok(None),
        _ => {}
    }
    // Accuracy needs a class per row: the voting combiners answer one, and so does fusion's
    // meta-model (a classifier over the members' probabilities); average and median do not.
    if !matches!(
        combiner,
        CombinerKind::SoftVote | CombinerKind::HardVote | CombinerKind::Fusion
    ) {
        return Err(format!(
            "ensemble '{name}': feedback needs the soft_vote, hard_vote or fusion combiner, not {}",
            combiner.as_str()
        ));
    }
    let accuracy_window = window.unwrap_or(FeedbackPolicy::DEFAULT_ACCURACY_WINDOW);
    if !(1..=FeedbackPolicy::MAX_ACCURACY_WINDOW).contains(&accuracy_window) {
        return Err(format!(
            "ensemble '{name}': `accuracy_window = {accuracy_window}` must be between 1 and {}",
            FeedbackPolicy::MAX_ACCURACY_WINDOW
        ));
    }
    if let Some(min) = min_accuracy
        && !(0.0..=1.0).contains(&min)
    {
        return Err(format!(
            "ensemble '{name}': `min_member_accuracy = {min}` must be between 0 and 1 (a share of rows right)"
        ));
    }
    Ok(Some(FeedbackPolicy {
        accuracy_window,
        min_member_accuracy: min_accuracy,
    }))
}

/// The `log_sample_rate` and `log_inputs` fields (defaults: every answer, inputs kept).
fn log_policy(
    name: &str,
    sample_rate: Option<f64>,
    inputs: Option<bool>,
) -> Result<LogPolicy, String> {
    let default = LogPolicy::default();
    let sample_rate = sample_rate.unwrap_or(default.sample_rate);
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(format!(
            "ensemble '{name}': `log_sample_rate = {sample_rate}` must be between 0 (log nothing) and 1 (log every answer)"
        ));
    }
    Ok(LogPolicy {
        sample_rate,
        inputs: inputs.unwrap_or(default.inputs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[ensemble]]
name = "soft"
combiner = "soft_vote"
deadline_ms = 500
min_members = 2
[[ensemble.member]]
model = "a"
[[ensemble.member]]
model = "b"
version = "2"
weight = 2.5

[[ensemble]]
name = "fused"
combiner = "fusion"
deadline_ms = 800
meta_model = "stacker"
[[ensemble.member]]
model = "a"
"#;

    fn error_of(text: &str) -> String {
        parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_good_file_with_defaults() {
        let specs = parse(GOOD, "test.toml").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].member_output, "probabilities");
        assert_eq!(specs[0].members[1].version.as_deref(), Some("2"));
        assert_eq!(specs[0].members[0].weight, 1.0);
        assert_eq!(specs[0].deadline, Duration::from_millis(500));
        assert_eq!(specs[1].min_members, 1, "defaults to every member");
        assert_eq!(specs[1].meta_model, Some(("stacker".into(), None)));
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        assert!(
            error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 500\ntimeout = 3"))
                .contains("timeout")
        );
        assert!(error_of(&GOOD.replace("version = 1", "version = 2")).contains("version = 2"));
        assert!(error_of(&GOOD.replace("soft_vote", "vote")).contains("vote"));
    }

    #[test]
    fn bad_values_name_the_field() {
        assert!(
            error_of(&GOOD.replace("min_members = 2", "min_members = 3")).contains("min_members")
        );
        assert!(
            error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 0")).contains("deadline_ms")
        );
        let absurd = error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 68719476736000"));
        assert!(
            absurd.contains("deadline_ms") && absurd.contains("3600000"),
            "{absurd}"
        );
        assert!(error_of(&GOOD.replace("weight = 2.5", "weight = -1.0")).contains("weight"));
        assert!(error_of(&GOOD.replace("meta_model = \"stacker\"", "")).contains("meta_model"));
        assert!(error_of(&GOOD.replace("name = \"fused\"", "name = \"soft\"")).contains("twice"));
        assert!(
            error_of(&GOOD.replace("model = \"b\"\nversion = \"2\"\n", "model = \"a\"\n"))
                .contains("listed twice")
        );
    }

    #[test]
    fn admission_limits_are_read_and_checked() {
        let limited = GOOD.replace(
            "deadline_ms = 500",
            "deadline_ms = 500\nmax_inflight = 32\nrate_limit = 100.0\nburst = 20",
        );
        let spec = &parse(&limited, "t").unwrap()[0];
        assert_eq!(spec.limits.max_inflight, Some(32));
        assert_eq!(spec.limits.rate_limit, Some(100.0));
        assert_eq!(spec.limits.burst, Some(20));
        assert!(parse(GOOD, "t").unwrap()[0].limits.is_none());
        let e = error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 500\nmax_inflight = 0"));
        assert!(e.contains("`max_inflight`"), "{e}");
        let e = error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 500\nrate_limit = 0.0"));
        assert!(e.contains("rate_limit"), "{e}");
        let e = error_of(&GOOD.replace("deadline_ms = 500", "deadline_ms = 500\nburst = 3"));
        assert!(e.contains("`burst` needs a `rate_limit`"), "{e}");
    }

    #[test]
    fn online_weights_are_read_and_checked() {
        let online = GOOD.replace(
            "deadline_ms = 500",
            "deadline_ms = 500\nweights = \"online\"\nlearning_rate = 0.5",
        );
        let spec = &parse(&online, "t").unwrap()[0];
        assert_eq!(
            spec.online,
            Some(OnlineWeights {
                learning_rate: 0.5,
                floor: OnlineWeights::DEFAULT_FLOOR
            })
        );
        assert_eq!(parse(GOOD, "t").unwrap()[0].online, None);
        let with = |extra: &str| {
            error_of(&GOOD.replace("deadline_ms = 500", &format!("deadline_ms = 500\n{extra}")))
        };
        assert!(with("weights = \"online\"\nlearning_rate = 0.0").contains("`learning_rate = 0`"));
        assert!(with("weights = \"online\"\nlearning_rate = 11.0").contains("learning_rate"));
        assert!(with("weights = \"online\"\nweight_floor = 1.0").contains("weight_floor"));
        assert!(with("weights = \"online\"\nweight_floor = 0.0").contains("weight_floor"));
        assert!(with("weight_floor = 0.1").contains("only apply with `weights = \"online\"`"));
        assert!(with("weights = \"learnt\"").contains("learnt"));
        let fused = GOOD.replace(
            "deadline_ms = 800",
            "deadline_ms = 800\nweights = \"online\"",
        );
        assert!(error_of(&fused).contains("soft_vote or hard_vote"));
    }

    #[test]
    fn feedback_is_kept_when_asked_for_or_needed() {
        let with = |extra: &str| {
            parse(
                &GOOD.replace("deadline_ms = 500", &format!("deadline_ms = 500\n{extra}")),
                "t",
            )
            .map(|specs| specs[0].feedback)
            .map_err(|e| e.to_string())
        };
        assert_eq!(with(""), Ok(None));
        let default = Some(FeedbackPolicy {
            accuracy_window: FeedbackPolicy::DEFAULT_ACCURACY_WINDOW,
            min_member_accuracy: None,
        });
        assert_eq!(with("feedback = true"), Ok(default));
        assert_eq!(with("weights = \"online\""), Ok(default));
        assert_eq!(
            with("min_member_accuracy = 0.5\naccuracy_window = 100"),
            Ok(Some(FeedbackPolicy {
                accuracy_window: 100,
                min_member_accuracy: Some(0.5)
            }))
        );
        let e = with("feedback = false\nweights = \"online\"").unwrap_err();
        assert!(e.contains("`feedback = false`"), "{e}");
        assert!(
            with("min_member_accuracy = 1.5")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(
            with("accuracy_window = 0")
                .unwrap_err()
                .contains("accuracy_window")
        );
        // Fusion takes feedback (accuracy only: online weights stay voting-only, see above).
        let fused = GOOD.replace("deadline_ms = 800", "deadline_ms = 800\nfeedback = true");
        let specs = parse(&fused, "t").unwrap();
        let fusion = specs
            .iter()
            .find(|s| s.combiner == CombinerKind::Fusion)
            .unwrap();
        assert_eq!(fusion.feedback, default);
        assert_eq!(fusion.online, None);
        let averaged = fused
            .replace("combiner = \"fusion\"", "combiner = \"average\"")
            .replace(
                "meta_model = \"stacker\"\n",
                "member_output = \"variable\"\n",
            );
        let e = error_of(&averaged);
        assert!(e.contains("soft_vote, hard_vote or fusion"), "{e}");
    }

    #[test]
    fn logging_fields_default_to_everything_and_are_checked() {
        let spec = &parse(GOOD, "t").unwrap()[0];
        assert_eq!(spec.log, LogPolicy::default());
        assert_eq!(spec.log.sample_rate, 1.0);
        assert!(spec.log.inputs);
        let set = GOOD.replace(
            "deadline_ms = 500",
            "deadline_ms = 500\nlog_sample_rate = 0.25\nlog_inputs = false",
        );
        let spec = &parse(&set, "t").unwrap()[0];
        assert_eq!(spec.log.sample_rate, 0.25);
        assert!(!spec.log.inputs);
        for bad in ["1.5", "-0.1", "nan"] {
            let e = error_of(&GOOD.replace(
                "deadline_ms = 500",
                &format!("deadline_ms = 500\nlog_sample_rate = {bad}"),
            ));
            assert!(
                e.contains("`log_sample_rate") && e.contains("between 0"),
                "{e}"
            );
        }
    }

    #[test]
    fn average_needs_a_member_output() {
        let text = "version = 1\n[[ensemble]]\nname = \"r\"\ncombiner = \"average\"\ndeadline_ms = 5\n[[ensemble.member]]\nmodel = \"a\"\n";
        assert!(error_of(text).contains("member_output"));
        let ok = text.replace("deadline_ms = 5", "deadline_ms = 5\nmember_output = \"y\"");
        assert_eq!(parse(&ok, "t").unwrap()[0].member_output, "y");
    }
}
