//! The in-process floor: the ensemble's member models on ONNX Runtime in this process, loaded
//! with the worker's own code and settings (per-model `config.toml`: one session per model, one
//! intra-op thread each), combined with the coordinator's own pure combiner. No network, no
//! serialisation, no queues: the physical limit Chorus's figures are compared against.
//!
//! Like a cluster with one instance per model, each model has one session, shared behind a lock:
//! N threads each run the whole ensemble in a loop, and more threads than cores only queue.

use super::closed_loop::Window;
use super::stats::{Failure, Recorder};
use anyhow::{Context, bail};
use chorus_common::Tensor;
use chorus_coordinator::combine::{self, Vote};
use chorus_coordinator::spec::{self, CombinerKind};
use chorus_worker::WorkerConfig;
use chorus_worker::model_config::ModelSettings;
use chorus_worker::pool::Runner;
use chorus_worker::repository;
use chorus_worker::session::{ModelSession, ProviderRequest, SessionTarget};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One member: its session and its weight in the combine.
struct Member {
    name: String,
    weight: f64,
    session: Mutex<ModelSession>,
}

/// A loaded ensemble (or single model) ready to run in process.
pub struct Floor {
    members: Vec<Member>,
    /// `None` for a single model: its answer is the result.
    combiner: Option<CombinerKind>,
    /// The member output the combiner reads (every output for a single model).
    member_output: Vec<String>,
}

impl Floor {
    /// Loads `model` (an ensemble in `ensembles`, else a model of `repository`). Blocking.
    pub fn load(repository_dir: &Path, ensembles: &Path, model: &str) -> anyhow::Result<Floor> {
        let specs = spec::load(ensembles)?;
        let (members, combiner, member_output) = match specs.iter().find(|s| s.name == model) {
            Some(spec) => {
                if spec.combiner == CombinerKind::Fusion {
                    bail!(
                        "the floor does not run fusion ensembles ('{model}'): its meta-model call is not a pure combine"
                    );
                }
                let members: Vec<(String, Option<String>, f64)> = spec
                    .members
                    .iter()
                    .map(|m| (m.model.clone(), m.version.clone(), m.weight))
                    .collect();
                (
                    members,
                    Some(spec.combiner),
                    vec![spec.member_output.clone()],
                )
            }
            None => (vec![(model.to_string(), None, 1.0)], None, vec![]),
        };
        let names: Vec<String> = members.iter().map(|(name, _, _)| name.clone()).collect();
        let defaults = ModelSettings::defaults(&WorkerConfig::default());
        let sources = repository::scan(repository_dir, &names, &defaults)?;
        let env = chorus_worker::ort_library::environment()?;
        let mut loaded = Vec::new();
        for (name, version, weight) in members {
            let source = sources
                .iter()
                .find(|s| s.name == name)
                .expect("scan returns every selected model");
            let chosen = match &version {
                None => source.versions.last(),
                Some(v) => source
                    .versions
                    .iter()
                    .find(|s| repository::parse_version(v) == Some(s.version)),
            }
            .with_context(|| format!("model '{name}' has no version {version:?}"))?;
            let settings = &source.settings;
            let target = SessionTarget {
                model: &name,
                version: chosen.version,
                path: &chosen.path,
            };
            let mut session = ModelSession::create(
                &env,
                target,
                settings,
                ProviderRequest::from_settings(settings),
            )
            .map_err(|e| anyhow::anyhow!("cannot load model '{name}': {e:?}"))?;
            session
                .warm_up()
                .map_err(|e| anyhow::anyhow!("warm-up of '{name}' failed: {e}"))?;
            loaded.push(Member {
                name,
                weight,
                session: Mutex::new(session),
            });
        }
        Ok(Floor {
            members: loaded,
            combiner,
            member_output,
        })
    }

    /// The member names, in ensemble order.
    pub fn member_names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// Runs every member on `input` in turn, then combines: one ensemble answer.
    pub fn infer(&self, input: &Tensor) -> anyhow::Result<Vec<Tensor>> {
        let inputs = std::slice::from_ref(input);
        let mut answers = Vec::with_capacity(self.members.len());
        for member in &self.members {
            let mut session = member
                .session
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut outputs = session
                .run(inputs, &self.member_output)
                .map_err(|e| anyhow::anyhow!("model '{}': {e}", member.name))?;
            drop(session);
            if self.combiner.is_none() {
                return Ok(outputs);
            }
            answers.push(outputs.swap_remove(0));
        }
        let votes: Vec<Vote> = self
            .members
            .iter()
            .zip(&answers)
            .map(|(member, tensor)| Vote {
                member: &member.name,
                weight: member.weight,
                tensor,
            })
            .collect();
        let combiner = self.combiner.expect("single models returned above");
        // No threshold: the floor measures the plain argmax vote, as it always has. Fusion was
        // refused at load, so `combine` never sees it.
        Ok(combiner.combine(&votes, &self.member_output[0], None)?)
    }
}

/// Input tensors with the labels a correct answer carries.
pub type Inputs = Arc<Vec<(Tensor, Option<Vec<i64>>)>>;

/// `threads` OS threads, each running the whole ensemble in a loop for the warm-up and the
/// measured time. Blocking.
pub fn run(
    floor: &Arc<Floor>,
    inputs: &Inputs,
    threads: usize,
    warmup: Duration,
    duration: Duration,
    verify_every: u64,
) -> Recorder {
    let window = Window::starting_now(warmup, duration);
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let floor = Arc::clone(floor);
            let inputs = Arc::clone(inputs);
            let first = index * inputs.len() / threads;
            std::thread::Builder::new()
                .name(format!("floor-{index}"))
                .spawn(move || thread_loop(&floor, &inputs, first, window, verify_every))
                .expect("cannot start a floor thread")
        })
        .collect();
    let mut total = Recorder::new();
    for handle in handles {
        total.merge(&handle.join().expect("a floor thread panicked"));
    }
    total
}

fn thread_loop(
    floor: &Floor,
    inputs: &[(Tensor, Option<Vec<i64>>)],
    first: usize,
    window: Window,
    verify_every: u64,
) -> Recorder {
    let mut recorder = Recorder::new();
    for n in 0u64.. {
        let started = Instant::now();
        if started >= window.until {
            break;
        }
        let (input, expected) = &inputs[(first + n as usize) % inputs.len()];
        let answer = floor.infer(input);
        let latency = started.elapsed();
        if started < window.from {
            continue;
        }
        let check = verify_every > 0 && n.is_multiple_of(verify_every);
        match answer {
            Ok(outputs) if check && !labels_match(&outputs, expected.as_deref()) => {
                recorder.failed(Failure::WrongAnswer)
            }
            Ok(_) => recorder.answered(latency, input.shape[0] as usize),
            Err(_) => recorder.failed(Failure::Status(500)),
        }
    }
    recorder
}

fn labels_match(outputs: &[Tensor], expected: Option<&[i64]>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    outputs
        .iter()
        .find(|t| t.name == combine::LABEL)
        .and_then(|t| t.to_values::<i64>().ok())
        .is_some_and(|labels| labels == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_compared_when_expected() {
        let out = vec![Tensor::from_values("label", vec![2], &[3i64, 4])];
        assert!(labels_match(&out, Some(&[3, 4])));
        assert!(!labels_match(&out, Some(&[3, 5])));
        assert!(labels_match(&out, None));
        assert!(!labels_match(&[], Some(&[3])));
    }
}
