//! Execution-provider selection with a real model: `auto` falls back to CPU where CUDA cannot be
//! registered, and a required `cuda` fails start-up there instead of silently using the CPU.
//! On a machine where CUDA does register, the same tests check that it is used and reported.

mod support;

use chorus_common::ExecutionProvider;
use chorus_worker::{LoadError, LoadedWorker, ProviderChoice, WorkerConfig};
use std::fs;
use support::{config, model_repository};

fn provider_of(worker: &LoadedWorker) -> ExecutionProvider {
    let models = worker.models();
    assert_eq!(models.len(), 1);
    models[0].execution_provider
}

/// Whether a required CUDA provider loads here; the result decides what the other checks expect.
fn required_cuda() -> Result<LoadedWorker, LoadError> {
    LoadedWorker::load(&WorkerConfig {
        require_provider: true,
        ..config(&["logreg"], ProviderChoice::Cuda)
    })
}

#[test]
fn auto_uses_cuda_when_it_registers_and_cpu_otherwise() {
    let auto = LoadedWorker::load(&config(&["logreg"], ProviderChoice::Auto)).unwrap();
    match required_cuda() {
        Ok(_) => assert_eq!(provider_of(&auto), ExecutionProvider::Cuda { device_id: 0 }),
        Err(_) => assert_eq!(provider_of(&auto), ExecutionProvider::Cpu),
    }
}

#[test]
fn required_cuda_fails_clearly_where_it_cannot_register() {
    match required_cuda() {
        Ok(worker) => assert_eq!(
            provider_of(&worker),
            ExecutionProvider::Cuda { device_id: 0 }
        ),
        Err(e) => {
            assert!(matches!(e, LoadError::ProviderUnavailable { .. }), "{e:?}");
            let text = e.to_string();
            for needle in ["logreg", "cuda:0", "require_provider"] {
                assert!(text.contains(needle), "{needle} missing from: {text}");
            }
        }
    }
}

#[test]
fn cuda_without_requirement_falls_back_with_a_warning() {
    let worker = LoadedWorker::load(&config(&["logreg"], ProviderChoice::Cuda)).unwrap();
    match required_cuda() {
        Ok(_) => assert_eq!(
            provider_of(&worker),
            ExecutionProvider::Cuda { device_id: 0 }
        ),
        Err(_) => assert_eq!(provider_of(&worker), ExecutionProvider::Cpu),
    }
}

#[test]
fn cpu_is_always_cpu() {
    let worker = LoadedWorker::load(&config(&["logreg"], ProviderChoice::Cpu)).unwrap();
    assert_eq!(provider_of(&worker), ExecutionProvider::Cpu);
}

#[test]
fn a_model_config_can_require_cuda() {
    // A one-model repository whose config.toml asks for CUDA on device 0, strictly.
    let tmp = tempfile::tempdir().unwrap();
    let version = tmp.path().join("strict/1");
    fs::create_dir_all(&version).unwrap();
    fs::copy(
        model_repository().join("logreg/1/model.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    fs::write(
        tmp.path().join("strict/config.toml"),
        "execution_provider = \"cuda\"\nrequire_provider = true\n",
    )
    .unwrap();
    let loaded = LoadedWorker::load(&WorkerConfig {
        model_repository: tmp.path().to_path_buf(),
        execution_provider: ProviderChoice::Cpu,
        ..WorkerConfig::default()
    });
    match required_cuda() {
        Ok(_) => assert_eq!(
            provider_of(&loaded.unwrap()),
            ExecutionProvider::Cuda { device_id: 0 }
        ),
        Err(_) => {
            let e = loaded.unwrap_err();
            assert!(
                matches!(e, LoadError::ProviderUnavailable { ref model, .. } if model == "strict"),
                "{e:?}"
            );
        }
    }
}
