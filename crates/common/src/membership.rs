//! Membership in etcd: the key layout, defined once, and the record a worker registers.
//!
//! `/chorus/v1/workers/{worker_id}` holds a JSON [`WorkerInfo`] under the worker's lease;
//! `/chorus/v1/ensembles/{name}` holds an ensemble spec file (TOML) that coordinators apply.

use crate::model::WorkerInfo;

/// Everything Chorus keeps in etcd lives under this prefix.
pub const ROOT_PREFIX: &str = "/chorus/v1/";
/// Worker registrations, one key per worker id.
pub const WORKERS_PREFIX: &str = "/chorus/v1/workers/";
/// Ensemble specs, one key per spec file.
pub const ENSEMBLES_PREFIX: &str = "/chorus/v1/ensembles/";

/// The key a worker registers under.
pub fn worker_key(worker_id: &str) -> String {
    format!("{WORKERS_PREFIX}{worker_id}")
}

/// The worker id of a key under [`WORKERS_PREFIX`], if it is one.
pub fn worker_id_of_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(WORKERS_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Whether `id` can be a worker id: non-empty, no '/', printable ASCII without spaces.
pub fn is_valid_worker_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Why a value under the workers prefix was not a usable record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("value is not a worker record: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("record for '{record}' is stored under the key of '{key}'")]
    IdMismatch { key: String, record: String },
}

/// Encodes a worker's registration value.
pub fn encode_record(info: &WorkerInfo) -> Vec<u8> {
    serde_json::to_vec(info).expect("worker records always serialise")
}

/// Decodes the value stored under `key`, checking that it describes that key's worker.
pub fn decode_record(key_worker_id: &str, value: &[u8]) -> Result<WorkerInfo, RecordError> {
    let info: WorkerInfo = serde_json::from_slice(value)?;
    if info.worker_id != key_worker_id {
        return Err(RecordError::IdMismatch {
            key: key_worker_id.to_string(),
            record: info.worker_id,
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionProvider, ModelInfo, TensorSpec, WorkerState};
    use crate::tensor::DataType;

    fn info(id: &str) -> WorkerInfo {
        WorkerInfo {
            worker_id: id.into(),
            rpc_addr: "10.0.0.7:9000".into(),
            state: WorkerState::Serving,
            capacity: 2,
            models: vec![ModelInfo {
                name: "logreg".into(),
                version: "1".into(),
                platform: crate::model::ONNX_PLATFORM.into(),
                inputs: vec![TensorSpec {
                    name: "input".into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 64],
                }],
                outputs: vec![],
                execution_provider: ExecutionProvider::Cpu,
                allow_non_finite: false,
                max_input_elements: 1 << 22,
                labels: Vec::new(),
            }],
            local_link: None,
        }
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(worker_key("w-1"), "/chorus/v1/workers/w-1");
        assert_eq!(worker_id_of_key(worker_key("w-1").as_bytes()), Some("w-1"));
        assert_eq!(worker_id_of_key(b"/chorus/v1/workers/"), None);
        assert_eq!(worker_id_of_key(b"/chorus/v1/workers/a/b"), None);
        assert_eq!(worker_id_of_key(b"/chorus/v1/ensembles/x"), None);
        assert_eq!(worker_id_of_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn worker_ids_are_checked() {
        assert!(is_valid_worker_id("worker-0.a_b"));
        assert!(!is_valid_worker_id(""));
        assert!(!is_valid_worker_id("a/b"));
        assert!(!is_valid_worker_id("a b"));
    }

    #[test]
    fn records_without_a_local_link_still_decode_and_links_round_trip() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&encode_record(&info("w-1"))).unwrap();
        json.as_object_mut().unwrap().remove("local_link");
        let older = serde_json::to_vec(&json).unwrap();
        assert_eq!(decode_record("w-1", &older).unwrap().local_link, None);

        let mut linked = info("w-1");
        linked.local_link = Some(crate::model::LocalLink {
            socket: "/run/chorus/w-1.sock".into(),
            host: "b/mnt:[4026531841]".into(),
        });
        assert_eq!(
            decode_record("w-1", &encode_record(&linked)).unwrap(),
            linked
        );
    }

    #[test]
    fn records_round_trip_and_must_match_their_key() {
        let value = encode_record(&info("w-1"));
        assert_eq!(decode_record("w-1", &value).unwrap(), info("w-1"));
        assert!(matches!(
            decode_record("w-2", &value),
            Err(RecordError::IdMismatch { .. })
        ));
        assert!(matches!(
            decode_record("w-1", b"{not json"),
            Err(RecordError::Malformed(_))
        ));
    }
}
