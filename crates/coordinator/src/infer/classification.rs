//! Triton's classification extension: an output requested with `classification: k` answers,
//! instead of its scores, the top `k` classes of each row as BYTES strings
//! `"<score>:<index>"`, or `"<score>:<index>:<label>"` when the model has class names. Works on
//! any float output whose rows are score vectors (`[N, C]`, or `[N]` as one score per row).

use super::InferError;
use chorus_common::tensor::{Element, encode_bytes_elements};
use chorus_common::{DataType, Tensor, TensorSpec};

/// Checks a classification request against the output's declared signature, before anything
/// runs: a float output with rows of one dimension, and `k` no more than its classes when the
/// signature fixes them.
pub fn check(model: &str, spec: &TensorSpec, k: usize) -> Result<(), InferError> {
    if !spec.datatype.is_float() {
        return Err(InferError::bad_request(format!(
            "output '{}' of model '{model}' is {}; classification ranks the scores of a float output (FP16, FP32, FP64 or BF16), such as 'probabilities'",
            spec.name, spec.datatype
        )));
    }
    if spec.shape.len() > 2 {
        return Err(InferError::bad_request(format!(
            "output '{}' of model '{model}' has shape {:?}; classification needs one score vector per row (shape [N, classes] or [N])",
            spec.name, spec.shape
        )));
    }
    if let Some(&classes) = spec.shape.get(1)
        && classes > 0
        && k > classes as usize
    {
        return Err(too_many(&spec.name, k, classes as usize));
    }
    Ok(())
}

fn too_many(output: &str, k: usize, classes: usize) -> InferError {
    InferError::bad_request(format!(
        "classification asks for the top {k} classes of output '{output}', which has only {classes}"
    ))
}

/// The top `k` classes of each row of `scores`, as a BYTES tensor `[rows, k]` named like it.
pub fn classify(scores: &Tensor, k: usize, labels: &[String]) -> Result<Tensor, InferError> {
    let values = as_f64(scores)?;
    let (rows, classes) = match scores.shape.as_slice() {
        [] => (1, 1),
        [rows] => (*rows as usize, 1),
        [rows, classes] => (*rows as usize, *classes as usize),
        shape => {
            return Err(InferError::Internal(format!(
                "output '{}' came back with shape {shape:?}, not one score vector per row",
                scores.name
            )));
        }
    };
    if k > classes {
        return Err(too_many(&scores.name, k, classes));
    }
    let mut entries: Vec<String> = Vec::with_capacity(rows * k);
    let mut order: Vec<usize> = Vec::with_capacity(classes);
    for row in values.chunks(classes.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // Highest score first; equal scores keep the lower index first (a stable order).
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &index in order.iter().take(k) {
            entries.push(match labels.get(index) {
                Some(label) => format!("{:.6}:{index}:{label}", row[index]),
                None => format!("{:.6}:{index}", row[index]),
            });
        }
    }
    Ok(Tensor {
        name: scores.name.clone(),
        datatype: DataType::Bytes,
        shape: vec![rows as i64, k as i64],
        data: encode_bytes_elements(entries.iter().map(String::as_bytes)),
    })
}

fn as_f64(t: &Tensor) -> Result<Vec<f64>, InferError> {
    fn widen<T: Element + Into<f64>>(t: &Tensor) -> Result<Vec<f64>, chorus_common::TensorError> {
        Ok(t.to_values::<T>()?.into_iter().map(Into::into).collect())
    }
    let values = match t.datatype {
        DataType::Fp32 => widen::<f32>(t),
        DataType::Fp64 => widen::<f64>(t),
        DataType::Fp16 => t
            .to_values::<half::f16>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DataType::Bf16 => t
            .to_values::<half::bf16>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        other => {
            return Err(InferError::bad_request(format!(
                "output '{}' is {other}; classification ranks float scores",
                t.name
            )));
        }
    };
    values.map_err(|e| InferError::Internal(format!("malformed output tensor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        t.bytes_elements()
            .unwrap()
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn the_top_k_of_each_row_with_labels() {
        let scores = Tensor::from_values("p", vec![2, 3], &[0.1f32, 0.7, 0.2, 0.5, 0.25, 0.25]);
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let top = classify(&scores, 2, &labels).unwrap();
        assert_eq!(top.datatype, DataType::Bytes);
        assert_eq!(top.shape, vec![2, 2]);
        assert_eq!(
            strings(&top),
            [
                "0.700000:1:dog",
                "0.200000:2",
                "0.500000:0:cat",
                "0.250000:1:dog"
            ],
            "a class past the labels has none; ties keep the lower index first"
        );
    }

    #[test]
    fn one_score_per_row_is_one_class() {
        let agreement = Tensor::from_values("agreement", vec![2], &[0.8f32, 1.0]);
        assert_eq!(
            strings(&classify(&agreement, 1, &[]).unwrap()),
            ["0.800000:0", "1.000000:0"]
        );
        assert!(classify(&agreement, 2, &[]).is_err());
    }

    #[test]
    fn requests_are_checked_against_the_signature() {
        let spec = |datatype, shape: Vec<i64>| TensorSpec {
            name: "o".into(),
            datatype,
            shape,
        };
        assert!(check("m", &spec(DataType::Fp32, vec![-1, 10]), 10).is_ok());
        let e = check("m", &spec(DataType::Fp32, vec![-1, 10]), 11).unwrap_err();
        assert_eq!(
            e.to_string(),
            "classification asks for the top 11 classes of output 'o', which has only 10"
        );
        let e = check("m", &spec(DataType::Int64, vec![-1]), 1).unwrap_err();
        assert!(e.to_string().contains("is INT64"), "{e}");
        let e = check("m", &spec(DataType::Fp32, vec![-1, 2, 2]), 1).unwrap_err();
        assert!(e.to_string().contains("one score vector per row"), "{e}");
        assert!(
            check("m", &spec(DataType::Fp32, vec![-1, -1]), 1000).is_ok(),
            "unknown width: checked on the answer"
        );
    }
}
