//! Builders shared by the combiners' unit tests.

use super::Vote;
use chorus_common::Tensor;

/// An FP32 `[N, C]` tensor from its rows.
pub fn probs(rows: &[&[f32]]) -> Tensor {
    let cols = rows.first().map_or(0, |row| row.len());
    let values: Vec<f32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_values(
        "probabilities",
        vec![rows.len() as i64, cols as i64],
        &values,
    )
}

/// An FP64 `[N, C]` tensor from its rows.
pub fn probs64(rows: &[&[f64]]) -> Tensor {
    let cols = rows.first().map_or(0, |row| row.len());
    let values: Vec<f64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_values(
        "probabilities",
        vec![rows.len() as i64, cols as i64],
        &values,
    )
}

/// An INT64 `[N]` label tensor.
pub fn labels(values: &[i64]) -> Tensor {
    Tensor::from_values("label", vec![values.len() as i64], values)
}

pub fn vote<'a>(member: &'a str, weight: f64, tensor: &'a Tensor) -> Vote<'a> {
    Vote {
        member,
        weight,
        tensor,
    }
}

/// Equal-weight votes named m0, m1, ... over `tensors`.
pub fn equal_votes(tensors: &[Tensor]) -> Vec<Vote<'_>> {
    const NAMES: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    tensors
        .iter()
        .enumerate()
        .map(|(i, tensor)| vote(NAMES[i], 1.0, tensor))
        .collect()
}

/// A small deterministic generator, so the property tests need no extra crates and never flake.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }

    /// A random FP32 `[rows, cols]` tensor.
    pub fn matrix(&mut self, rows: usize, cols: usize) -> Tensor {
        let values: Vec<f32> = (0..rows * cols).map(|_| self.next_f32()).collect();
        Tensor::from_values("probabilities", vec![rows as i64, cols as i64], &values)
    }
}
