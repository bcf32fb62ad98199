use super::*;
use chorus_common::ExecutionProvider;
use std::collections::HashMap;

fn tensor(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

fn model(name: &str, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        platform: "onnxruntime_onnx".into(),
        inputs,
        outputs,
        execution_provider: ExecutionProvider::Cpu,
        allow_non_finite: false,
        max_input_elements: 1 << 20,
        labels: vec![],
    }
}

/// The models a user brings: skl2onnx (`float_input`, `label`/`probabilities` [N, 2]), a
/// Keras-like sigmoid (`input.1`, `dense_1` [N, 1]), a digits-style model and a stacker.
fn repository() -> HashMap<String, ModelInfo> {
    let x = |name: &str| tensor(name, DataType::Fp32, &[-1, 30]);
    let skl_outputs = || {
        vec![
            tensor("label", DataType::Int64, &[-1]),
            tensor("probabilities", DataType::Fp32, &[-1, 2]),
        ]
    };
    [
        model("skl", vec![x("float_input")], skl_outputs()),
        model("forest", vec![x("X")], skl_outputs()),
        model(
            "sigmoid",
            vec![x("input.1")],
            vec![tensor("dense_1", DataType::Fp32, &[-1, 1])],
        ),
        model(
            "digits",
            vec![tensor("input", DataType::Fp32, &[-1, 64])],
            vec![
                tensor("label", DataType::Int64, &[-1]),
                tensor("probabilities", DataType::Fp32, &[-1, 10]),
            ],
        ),
        model(
            "narrow",
            vec![tensor("input.1", DataType::Fp32, &[-1, 20])],
            vec![tensor("dense_1", DataType::Fp32, &[-1])],
        ),
        model(
            "ints",
            vec![tensor("input.1", DataType::Int64, &[-1, 30])],
            vec![tensor("dense_1", DataType::Fp32, &[-1, 1])],
        ),
        model(
            "stacker",
            vec![tensor("float_input", DataType::Fp32, &[-1, 6])],
            skl_outputs(),
        ),
    ]
    .into_iter()
    .map(|m| (m.name.clone(), m))
    .collect()
}

fn spec(text: &str) -> EnsembleSpec {
    let file = format!("version = 1\n{text}");
    crate::spec::parse(&file, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

fn run(text: &str) -> Result<Signature, Problems> {
    let models = repository();
    derive(&spec(text), &|name: &str, _: Option<&str>| {
        models.get(name).cloned()
    })
}

fn problems(text: &str) -> Vec<String> {
    match run(text) {
        Ok(_) => panic!("derived a signature for a bad spec:\n{text}"),
        Err(problems) => problems.0,
    }
}

const MAPPED: &str = r#"
[[ensemble]]
name = "cancer"
combiner = "soft_vote"
deadline_ms = 100
[[ensemble.member]]
model = "skl"
input_map = { input = "float_input" }
[[ensemble.member]]
model = "sigmoid"
input_map = { input = "input.1" }
output_map = { dense_1 = "probabilities" }
[[ensemble.member]]
model = "forest"
input_map = { input = "X" }
"#;

#[test]
fn mapped_members_give_the_ensemble_names_and_binary_width() {
    let signature = run(MAPPED).unwrap();
    assert_eq!(
        signature.inputs,
        vec![tensor("input", DataType::Fp32, &[-1, 30])]
    );
    assert_eq!(
        signature.outputs,
        vec![
            tensor("label", DataType::Int64, &[-1]),
            // The one-column member counts as two classes, as the combiner expands it.
            tensor("probabilities", DataType::Fp32, &[-1, 2]),
        ]
    );
    let hard = MAPPED.replace(
        "combiner = \"soft_vote\"",
        "combiner = \"hard_vote\"\nmember_output = \"probabilities\"\nthreshold = 0.7",
    );
    assert!(run(&hard).is_ok());
}

#[test]
fn unmapped_members_keep_todays_checks() {
    let same = r#"
[[ensemble]]
name = "d"
combiner = "soft_vote"
deadline_ms = 100
[[ensemble.member]]
model = "digits"
"#;
    let signature = run(same).unwrap();
    assert_eq!(signature.inputs[0].name, "input");
    assert_eq!(signature.outputs[1].shape, vec![-1, 10]);
}

#[test]
fn a_missing_input_map_names_member_field_and_fix() {
    let text = MAPPED.replace("input_map = { input = \"input.1\" }\n", "");
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("member 'sigmoid'")
            && p.contains("'input'")
            && p.contains("input_map = { \"input\" = \"<its input>\" }")
            && p.contains("input.1")),
        "{found:?}"
    );
    // The same mistake also shows as an extra input, with the name to map.
    assert!(
        found
            .iter()
            .any(|p| p.contains("takes input 'input.1'") && p.contains("\"input.1\"")),
        "{found:?}"
    );
}

#[test]
fn unknown_names_in_maps_are_reported() {
    let text = MAPPED
        .replace("input = \"X\"", "input = \"x\"")
        .replace("dense_1 = \"probabilities\"", "dense_2 = \"probabilities\"");
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("member 'forest'")
            && p.contains("`input_map`")
            && p.contains("no input 'x'")
            && p.contains("[X]")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("member 'sigmoid'")
            && p.contains("`output_map`")
            && p.contains("'dense_2'")
            && p.contains("[dense_1]")),
        "{found:?}"
    );
    // Both problems at once, not only the first.
    assert!(found.len() >= 2, "{found:?}");
    let joined = run(&text).unwrap_err().to_string();
    assert!(joined.contains("; "), "{joined}");
}

#[test]
fn a_role_no_output_plays_is_reported() {
    // Mapped, but not to the role soft_vote reads.
    let text = MAPPED.replace("dense_1 = \"probabilities\"", "dense_1 = \"score\"");
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("member 'sigmoid'")
            && p.contains("maps no output to 'probabilities'")
            && p.contains("soft_vote")),
        "{found:?}"
    );
    // Unmapped, and the model has no output of the role's name.
    let text = MAPPED.replace("output_map = { dense_1 = \"probabilities\" }\n", "");
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("member 'sigmoid'")
            && p.contains("no output 'probabilities'")
            && p.contains("output_map = { \"<output>\" = \"probabilities\" }")),
        "{found:?}"
    );
}

#[test]
fn input_dtype_and_shape_clashes_are_reported() {
    let text = MAPPED.replace("model = \"sigmoid\"", "model = \"ints\"");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("member 'ints'") && p.contains("INT64") && p.contains("FP32")),
        "{found:?}"
    );
    let text = MAPPED.replace("model = \"sigmoid\"", "model = \"narrow\"");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("member 'narrow'") && p.contains("[-1, 20]")),
        "{found:?}"
    );
}

#[test]
fn class_counts_and_thresholds_must_fit() {
    let text = MAPPED.replace(
        "model = \"forest\"\ninput_map = { input = \"X\" }",
        "model = \"digits\"",
    );
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("member 'digits'") && p.contains("10 classes")),
        "{found:?}"
    );
    let text = r#"
[[ensemble]]
name = "d"
combiner = "soft_vote"
deadline_ms = 100
threshold = 0.3
[[ensemble.member]]
model = "digits"
"#;
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("`threshold = 0.3`") && p.contains("scores 10")),
        "{found:?}"
    );
}

#[test]
fn the_combined_output_must_fit_the_combiner() {
    let text = MAPPED
        .replace(
            "combiner = \"soft_vote\"",
            "combiner = \"soft_vote\"\nmember_output = \"label\"",
        )
        .replace("dense_1 = \"probabilities\"", "dense_1 = \"label\"");
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("member 'skl'")
            && p.contains("INT64")
            && p.contains("soft_vote combiner reads")),
        "{found:?}"
    );
}

#[test]
fn fusion_checks_the_meta_model_width() {
    let fusion = MAPPED.replace(
        "combiner = \"soft_vote\"",
        "combiner = \"fusion\"\nmeta_model = \"stacker\"",
    );
    let signature = run(&fusion).unwrap();
    assert_eq!(signature.outputs[0].name, "label");
    // Two members give four columns; the stacker takes six.
    let short = fusion.replace(
        "[[ensemble.member]]\nmodel = \"forest\"\ninput_map = { input = \"X\" }\n",
        "",
    );
    let found = problems(&short);
    assert!(
        found
            .iter()
            .any(|p| p.contains("takes 6 columns but the members give 4")),
        "{found:?}"
    );
}
