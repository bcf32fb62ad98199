//! The bound path against the plain one on the CPU provider, with the repository's real models:
//! the same ORT kernels run either way, so the answers must match to the bit.

use crate::config::{ProviderChoice, WorkerConfig};
use crate::model_config::ModelSettings;
use crate::pool::{BatchMember, Runner};
use crate::session::{ModelSession, ProviderRequest, SessionTarget};
use chorus_common::Tensor;
use std::path::{Path, PathBuf};

fn model_file(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/{model}/1/model.onnx"))
}

/// A CPU session of `model` with `io_binding` as given (none: the default for CPU).
fn session(model: &str, io_binding: Option<bool>) -> ModelSession {
    let env = crate::ort_library::environment()
        .expect("the ONNX Runtime library is needed for this test");
    let defaults = ModelSettings::defaults(&WorkerConfig {
        execution_provider: ProviderChoice::Cpu,
        ..WorkerConfig::default()
    });
    let text = match io_binding {
        Some(on) => format!("intra_op_threads = 1\nio_binding = {on}\n"),
        None => "intra_op_threads = 1\n".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = ModelSettings::parse(&text, &dir.path().join("config.toml"), &defaults).unwrap();
    let file = model_file(model);
    let target = SessionTarget {
        model,
        version: 1,
        path: &file,
    };
    let request = ProviderRequest::from_settings(&settings);
    let mut session = ModelSession::create(&env, target, &settings, request).unwrap();
    session.warm_up().unwrap();
    session
}

/// `rows` deterministic digit-like rows (pixel values 0–16) of `features` floats.
fn rows(rows: usize, features: usize, seed: u64) -> Tensor {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..rows * features)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 17) as f32
        })
        .collect();
    Tensor::from_values("input", vec![rows as i64, features as i64], &values)
}

fn assert_bit_identical(model: &str, what: &str, plain: &[Tensor], bound: &[Tensor]) {
    assert_eq!(plain.len(), bound.len(), "{model} {what}: output count");
    for (p, b) in plain.iter().zip(bound) {
        assert_eq!(
            (&p.name, p.datatype, &p.shape),
            (&b.name, b.datatype, &b.shape),
            "{model} {what}"
        );
        assert!(
            p.data == b.data,
            "{model} {what}: output '{}' differs",
            p.name
        );
    }
}

#[test]
fn io_binding_is_off_by_default_on_cpu_and_on_when_asked() {
    assert!(!session("mlp", None).io_binding());
    assert!(session("mlp", Some(true)).io_binding());
    assert!(!session("mlp", Some(false)).io_binding());
}

#[test]
fn bound_runs_give_bit_identical_answers_to_plain_runs() {
    for (model, features) in [
        ("mlp", 64),
        ("random_forest", 64),
        ("logreg", 64),
        ("stacker", 50),
    ] {
        let mut plain = session(model, Some(false));
        let mut bound = session(model, Some(true));
        assert!(bound.io_binding() && !plain.io_binding());
        // Single rows and a 32-row request, all outputs and one named output; repeated runs
        // show the bound output buffers are not stale from one run to the next.
        for seed in 0..20 {
            let n = if seed % 5 == 4 { 32 } else { 1 };
            let input = rows(n, features, seed);
            let wanted: Vec<String> = if seed % 2 == 0 {
                Vec::new()
            } else {
                vec!["probabilities".into()]
            };
            let p = plain.run(std::slice::from_ref(&input), &wanted).unwrap();
            let b = bound.run(std::slice::from_ref(&input), &wanted).unwrap();
            assert_bit_identical(model, &format!("run {seed}"), &p, &b);
        }
        // A dynamic batch of three requests of different sizes, one of which wants one output.
        let inputs: Vec<[Tensor; 1]> = [3, 1, 7]
            .iter()
            .enumerate()
            .map(|(i, &n)| [rows(n, features, 100 + i as u64)])
            .collect();
        let probabilities = vec!["probabilities".to_string()];
        let members: Vec<BatchMember<'_>> = inputs
            .iter()
            .zip([3, 1, 7])
            .enumerate()
            .map(|(i, (input, n))| BatchMember {
                inputs: input,
                outputs: if i == 1 { &probabilities } else { &[] },
                rows: n,
            })
            .collect();
        let p = plain.run_batch(&members).unwrap();
        let b = bound.run_batch(&members).unwrap();
        for (j, (p, b)) in p.iter().zip(&b).enumerate() {
            assert_bit_identical(model, &format!("batch member {j}"), p, b);
        }
    }
}

#[test]
fn a_bound_run_with_a_bad_input_fails_cleanly_and_the_next_one_works() {
    let mut bound = session("mlp", Some(true));
    let wrong = rows(1, 63, 1);
    let e = bound.run(&[wrong], &[]).unwrap_err();
    assert!(e.to_string().contains("model 'mlp'"), "{e}");
    let good = rows(2, 64, 2);
    let expected = session("mlp", Some(false))
        .run(std::slice::from_ref(&good), &[])
        .unwrap();
    let again = bound.run(&[good], &[]).unwrap();
    assert_bit_identical("mlp", "after a failure", &expected, &again);
}

/// Not a check: the per-run cost of the bound and plain paths on CPU, for docs/benchmarks.md.
/// Alternates blocks of runs of the two sessions so that machine noise falls on both; prints the
/// median block's mean time per run.
/// `cargo test -p chorus-worker --lib io_binding_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn io_binding_cost_on_cpu() {
    use std::time::Instant;
    const BLOCKS: usize = 15;
    const RUNS: u32 = 1000;
    for (model, rows_per_run) in [("mlp", 1), ("mlp", 32), ("random_forest", 1)] {
        let mut sessions = [session(model, Some(false)), session(model, Some(true))];
        let input = [rows(rows_per_run, 64, 7)];
        let mut means: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..BLOCKS {
            for (s, mean) in sessions.iter_mut().zip(&mut means) {
                let start = Instant::now();
                for _ in 0..RUNS {
                    s.run(&input, &[]).unwrap();
                }
                mean.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(RUNS));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (plain, bound) = (median(&mut means[0]), median(&mut means[1]));
        println!(
            "{model} rows={rows_per_run}: plain {plain:.1} µs/run, bound {bound:.1} µs/run ({:+.1} %)",
            (bound / plain - 1.0) * 100.0
        );
    }
}
