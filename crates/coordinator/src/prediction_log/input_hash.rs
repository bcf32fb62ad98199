//! The `input_hash` of a prediction log record: XXH3-128 of a request's input tensors (name,
//! datatype, shape and raw bytes), always recorded, so that repeated inputs and input drift can
//! be found in a log kept without the inputs (`log_inputs = false`).
//!
//! What is hashed is the decoded tensor, not the wire form: the same values sent as REST JSON,
//! REST binary or gRPC (raw or typed contents) hash the same. Inputs are taken in name order, so
//! the order a client lists them in does not matter. Every variable-length part is preceded by
//! its length, so no two different inputs can be written as the same byte string. XXH3 is not a
//! cryptographic hash: it finds duplicates, it does not hide the inputs from someone who can
//! guess them (docs/data.md, "Privacy").

use chorus_common::Tensor;
use twox_hash::XxHash3_128;

/// The hash of `inputs`, on the writer thread (a sampled request's entry holds its inputs'
/// handles whether or not they are written), so the request path pays nothing for it.
pub fn input_hash(inputs: &[Tensor]) -> u128 {
    let mut ordered: Vec<&Tensor> = inputs.iter().collect();
    ordered.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = XxHash3_128::new();
    let mut part = |bytes: &[u8]| {
        hasher.write(&(bytes.len() as u64).to_le_bytes());
        hasher.write(bytes);
    };
    for tensor in ordered {
        part(tensor.name.as_bytes());
        part(tensor.datatype.as_str().as_bytes());
        let shape: Vec<u8> = tensor.shape.iter().flat_map(|d| d.to_le_bytes()).collect();
        part(&shape);
        part(&tensor.data);
    }
    hasher.finish_128()
}

/// The hash as the log writes it: 32 lowercase hex digits (a JSON number cannot hold 128 bits).
pub fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor::from_values(name, shape, values)
    }

    #[test]
    fn the_same_inputs_hash_the_same_in_any_order() {
        let a = input("a", vec![1, 2], &[0.5, 1.0]);
        let b = input("b", vec![1], &[2.0]);
        let hash = input_hash(&[a.clone(), b.clone()]);
        assert_eq!(input_hash(&[b, a]), hash);
        assert_eq!(hex(0xab), format!("{}ab", "0".repeat(30)));
    }

    #[test]
    fn values_shape_datatype_and_name_all_count() {
        let base = input("x", vec![1, 2], &[0.5, 1.0]);
        let hash = input_hash(std::slice::from_ref(&base));
        let changed = [
            input("x", vec![1, 2], &[0.5, 1.5]),
            input("x", vec![2, 1], &[0.5, 1.0]),
            input("y", vec![1, 2], &[0.5, 1.0]),
            // The same eight bytes as two INT32.
            Tensor {
                datatype: chorus_common::DataType::Int32,
                ..base.clone()
            },
        ];
        for other in changed {
            assert_ne!(input_hash(std::slice::from_ref(&other)), hash, "{other:?}");
        }
        // Moving a byte from one part to the next changes the hash (the lengths are hashed).
        let split = [input("x", vec![1], &[0.5]), input("xx", vec![1], &[1.0])];
        let joined = [input("x", vec![1], &[0.5]), input("x", vec![1], &[1.0])];
        assert_ne!(input_hash(&split), input_hash(&joined));
        assert_ne!(input_hash(&[]), hash);
    }

    /// What hashing costs the writer thread (docs/benchmarks.md, "The prediction log"): run with
    /// `cargo test --release -p chorus-coordinator --lib input_hash_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, not a check"]
    fn input_hash_cost() {
        for (label, len) in [
            ("1x64 FP32", 64usize),
            ("256x64 FP32", 256 * 64),
            ("1x3x224x224 FP32", 3 * 224 * 224),
        ] {
            let inputs = [input("input", vec![1, len as i64], &vec![0.25f32; len])];
            let runs = (50_000_000 / (len * 4 + 200)).clamp(100, 1_000_000);
            let started = std::time::Instant::now();
            for _ in 0..runs {
                std::hint::black_box(input_hash(std::hint::black_box(&inputs)));
            }
            let each = started.elapsed().as_secs_f64() / runs as f64;
            println!("{label}: {:.3} µs per request ({runs} runs)", each * 1e6);
        }
    }
}
