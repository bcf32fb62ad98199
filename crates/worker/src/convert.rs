//! Converts wire tensors (raw little-endian bytes) to ONNX Runtime values and back, one request
//! at a time or a batch of them joined along dimension 0.
//!
//! Inputs are decoded into a typed `Vec` rather than viewed in place: the bytes of a
//! `bytes::Bytes` carry no alignment guarantee, and the copy is one pass over memory that ORT would
//! otherwise read anyway. A batch's parts are decoded straight into the one buffer ORT takes, so
//! joining costs no second copy. Outputs borrow the session, so they are copied out (split by
//! rows for a batch) before it runs again.

use chorus_common::tensor::{Element, encode_bytes_elements};
use chorus_common::{DataType, Tensor, TensorSpec, WorkerError};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, ValueType};
use std::fmt::Debug;
use std::ops::Range;

/// An ORT value holding `tensor`'s data, or why it cannot be made.
pub fn to_ort_value(tensor: &Tensor) -> Result<DynValue, WorkerError> {
    to_ort_value_rows(&[tensor])
}

/// An ORT value holding `parts` joined along dimension 0 (one part: that tensor as it is). The
/// parts must share name, datatype and non-batch dimensions; `BYTES` inputs are not joined.
pub fn to_ort_value_rows(parts: &[&Tensor]) -> Result<DynValue, WorkerError> {
    let first = *parts
        .first()
        .ok_or_else(|| WorkerError::Internal("no tensor to convert".into()))?;
    let shape = joined_shape(parts)?;
    match first.datatype {
        DataType::Bool => bool_value(parts, shape),
        DataType::Uint8 => typed::<u8>(parts, shape),
        DataType::Uint16 => typed::<u16>(parts, shape),
        DataType::Uint32 => typed::<u32>(parts, shape),
        DataType::Uint64 => typed::<u64>(parts, shape),
        DataType::Int8 => typed::<i8>(parts, shape),
        DataType::Int16 => typed::<i16>(parts, shape),
        DataType::Int32 => typed::<i32>(parts, shape),
        DataType::Int64 => typed::<i64>(parts, shape),
        DataType::Fp16 => typed::<half::f16>(parts, shape),
        DataType::Fp32 => typed::<f32>(parts, shape),
        DataType::Fp64 => typed::<f64>(parts, shape),
        DataType::Bf16 => typed::<half::bf16>(parts, shape),
        DataType::Bytes if parts.len() == 1 => string_value(first),
        DataType::Bytes => Err(WorkerError::Internal(format!(
            "BYTES input '{}' cannot be batched",
            first.name
        ))),
    }
}

/// The shape of `parts` joined along dimension 0, after checking that they can be joined.
fn joined_shape(parts: &[&Tensor]) -> Result<Vec<i64>, WorkerError> {
    let first = parts[0];
    if parts.len() == 1 {
        return Ok(first.shape.clone());
    }
    let mut shape = first.shape.clone();
    let mut rows = 0i64;
    for part in parts {
        let joinable = !part.shape.is_empty()
            && part.name == first.name
            && part.datatype == first.datatype
            && part.shape[1..] == first.shape[1..];
        if !joinable {
            return Err(WorkerError::Internal(format!(
                "cannot batch '{}' {:?} with {:?}",
                first.name, first.shape, part.shape
            )));
        }
        rows = rows.checked_add(part.shape[0]).ok_or_else(|| {
            WorkerError::Internal(format!("batch of '{}' is too large", first.name))
        })?;
    }
    shape[0] = rows;
    Ok(shape)
}

fn invalid(e: impl ToString) -> WorkerError {
    WorkerError::InvalidInput(e.to_string())
}

fn ort_failure(name: &str, e: ort::Error) -> WorkerError {
    WorkerError::Internal(format!("cannot build input '{name}' for ONNX Runtime: {e}"))
}

fn typed<T>(parts: &[&Tensor], shape: Vec<i64>) -> Result<DynValue, WorkerError>
where
    T: Element + PrimitiveTensorElementType + Debug + Clone + 'static,
{
    let size = std::mem::size_of::<T>();
    let mut values: Vec<T> = Vec::with_capacity(parts.iter().map(|p| p.data.len() / size).sum());
    for part in parts {
        if part.datatype != T::DATATYPE {
            return Err(invalid(format!(
                "'{}' holds {}, not {}",
                part.name,
                part.datatype,
                T::DATATYPE
            )));
        }
        part.check_byte_size().map_err(invalid)?;
        // The one copy: little-endian bytes straight into the buffer ORT takes ownership of.
        values.extend(part.data.chunks_exact(size).map(T::read_le));
    }
    ort::value::Tensor::from_array((shape, values))
        .map(|t| t.into_dyn())
        .map_err(|e| ort_failure(&parts[0].name, e))
}

fn bool_value(parts: &[&Tensor], shape: Vec<i64>) -> Result<DynValue, WorkerError> {
    let mut values: Vec<bool> = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for part in parts {
        part.check_byte_size().map_err(invalid)?;
        // Any non-zero byte is true; handing ORT a byte other than 0/1 as a C++ bool is undefined.
        values.extend(part.data.iter().map(|&b| b != 0));
    }
    ort::value::Tensor::from_array((shape, values))
        .map(|t| t.into_dyn())
        .map_err(|e| ort_failure(&parts[0].name, e))
}

fn string_value(tensor: &Tensor) -> Result<DynValue, WorkerError> {
    let elements = tensor.bytes_elements().map_err(invalid)?;
    let strings = elements
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            // Owned: ort wants `'static` element types for string arrays.
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                invalid(format!(
                    "element {i} of BYTES input '{}' is not UTF-8, which ONNX Runtime string tensors require",
                    tensor.name
                ))
            })
        })
        .collect::<Result<Vec<String>, _>>()?;
    ort::value::Tensor::from_string_array((tensor.shape.clone(), strings.as_slice()))
        .map(|t| t.into_dyn())
        .map_err(|e| ort_failure(&tensor.name, e))
}

/// Why a batch's output could not be split back into its requests' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Its dimension 0 is not the batch's rows.
    NotBatchMajor(String),
    Other(String),
}

/// Splits ORT output `value` into consecutive pieces of `rows` rows, named `name`; only the
/// pieces whose `wants` entry is true are copied out (one copy each), the others are `None`.
pub fn split_ort_value(
    name: &str,
    value: &DynValue,
    rows: &[usize],
    wants: &[bool],
) -> Result<Vec<Option<Tensor>>, SplitError> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(SplitError::Other(format!(
            "output '{name}' is a {}, not a tensor",
            value.dtype()
        )));
    };
    let other = |e: ort::Error| SplitError::Other(format!("cannot read output '{name}': {e}"));
    match ty {
        TensorElementType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(other)?;
            split_with(name, shape, rows, wants, |range, shape| {
                let bytes: Vec<u8> = data[range].iter().map(|&b| u8::from(b)).collect();
                Tensor {
                    name: name.to_string(),
                    datatype: DataType::Bool,
                    shape,
                    data: bytes.into(),
                }
            })
        }
        TensorElementType::Uint8 => split_typed::<u8>(name, value, rows, wants),
        TensorElementType::Uint16 => split_typed::<u16>(name, value, rows, wants),
        TensorElementType::Uint32 => split_typed::<u32>(name, value, rows, wants),
        TensorElementType::Uint64 => split_typed::<u64>(name, value, rows, wants),
        TensorElementType::Int8 => split_typed::<i8>(name, value, rows, wants),
        TensorElementType::Int16 => split_typed::<i16>(name, value, rows, wants),
        TensorElementType::Int32 => split_typed::<i32>(name, value, rows, wants),
        TensorElementType::Int64 => split_typed::<i64>(name, value, rows, wants),
        TensorElementType::Float16 => split_typed::<half::f16>(name, value, rows, wants),
        TensorElementType::Float32 => split_typed::<f32>(name, value, rows, wants),
        TensorElementType::Float64 => split_typed::<f64>(name, value, rows, wants),
        TensorElementType::Bfloat16 => split_typed::<half::bf16>(name, value, rows, wants),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(other)?;
            split_with(name, shape, rows, wants, |range, shape| Tensor {
                name: name.to_string(),
                datatype: DataType::Bytes,
                shape,
                data: encode_bytes_elements(strings[range].iter().map(String::as_bytes)),
            })
        }
        unsupported => Err(SplitError::Other(format!(
            "output '{name}' has unsupported element type {unsupported:?}"
        ))),
    }
}

fn split_typed<T>(
    name: &str,
    value: &DynValue,
    rows: &[usize],
    wants: &[bool],
) -> Result<Vec<Option<Tensor>>, SplitError>
where
    T: Element + PrimitiveTensorElementType,
{
    let (shape, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| SplitError::Other(format!("cannot read output '{name}': {e}")))?;
    split_with(name, shape, rows, wants, |range, shape| {
        Tensor::from_values(name, shape, &data[range])
    })
}

/// Cuts an output of `shape` into the element ranges of each member's rows and makes the
/// wanted pieces with `piece(elements, piece_shape)`.
fn split_with(
    name: &str,
    shape: &[i64],
    rows: &[usize],
    wants: &[bool],
    mut piece: impl FnMut(Range<usize>, Vec<i64>) -> Tensor,
) -> Result<Vec<Option<Tensor>>, SplitError> {
    let total: usize = rows.iter().sum();
    let batch_major = shape
        .first()
        .is_some_and(|&d| usize::try_from(d).ok() == Some(total));
    if !batch_major {
        return Err(SplitError::NotBatchMajor(format!(
            "output '{name}' has shape {shape:?}, whose first dimension is not the batch's {total} rows"
        )));
    }
    let per_row: usize = shape[1..].iter().map(|&d| d.max(0) as usize).product();
    let mut start = 0;
    let mut pieces = Vec::with_capacity(rows.len());
    for (&n, &want) in rows.iter().zip(wants) {
        let elements = start..start + n * per_row;
        start = elements.end;
        pieces.push(want.then(|| {
            let mut mine = shape.to_vec();
            mine[0] = n as i64;
            piece(elements, mine)
        }));
    }
    Ok(pieces)
}

/// Copies an ORT output into a wire tensor named `name`.
pub fn from_ort_value(name: &str, value: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!(
            "output '{name}' is a {}, not a tensor",
            value.dtype()
        ));
    };
    let copied = match ty {
        TensorElementType::Bool => {
            let (shape, data) = value
                .try_extract_tensor::<bool>()
                .map_err(|e| e.to_string())?;
            let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
            Ok(Tensor {
                name: name.to_string(),
                datatype: DataType::Bool,
                shape: shape.to_vec(),
                data: bytes.into(),
            })
        }
        TensorElementType::Uint8 => extract::<u8>(name, value),
        TensorElementType::Uint16 => extract::<u16>(name, value),
        TensorElementType::Uint32 => extract::<u32>(name, value),
        TensorElementType::Uint64 => extract::<u64>(name, value),
        TensorElementType::Int8 => extract::<i8>(name, value),
        TensorElementType::Int16 => extract::<i16>(name, value),
        TensorElementType::Int32 => extract::<i32>(name, value),
        TensorElementType::Int64 => extract::<i64>(name, value),
        TensorElementType::Float16 => extract::<half::f16>(name, value),
        TensorElementType::Float32 => extract::<f32>(name, value),
        TensorElementType::Float64 => extract::<f64>(name, value),
        TensorElementType::Bfloat16 => extract::<half::bf16>(name, value),
        TensorElementType::String => value.try_extract_strings().map(|(shape, strings)| Tensor {
            name: name.to_string(),
            datatype: DataType::Bytes,
            shape: shape.to_vec(),
            data: encode_bytes_elements(strings.iter().map(String::as_bytes)),
        }),
        other => {
            return Err(format!(
                "output '{name}' has unsupported element type {other:?}"
            ));
        }
    };
    copied.map_err(|e| format!("cannot read output '{name}': {e}"))
}

fn extract<T>(name: &str, value: &DynValue) -> Result<Tensor, ort::Error>
where
    T: Element + PrimitiveTensorElementType,
{
    let (shape, data) = value.try_extract_tensor::<T>()?;
    Ok(Tensor::from_values(name, shape.to_vec(), data))
}

/// An all-zero tensor matching `spec`, with every dynamic dimension set to 1: the warm-up input.
pub fn zeros(spec: &TensorSpec) -> Tensor {
    let shape: Vec<i64> = spec
        .shape
        .iter()
        .map(|&d| if d > 0 { d } else { 1 })
        .collect();
    // A declared 0-sized dim would make an empty tensor, which is a fine warm-up too.
    let count: usize = shape.iter().map(|&d| d.max(0) as usize).product();
    let data = match spec.datatype.element_size() {
        Some(size) => vec![0u8; count * size].into(),
        None => encode_bytes_elements(std::iter::repeat_n(&b""[..], count)),
    };
    Tensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ort() {
        crate::ort_library::environment()
            .expect("the ONNX Runtime library is needed for this test");
    }

    #[test]
    fn every_datatype_round_trips_through_ort() {
        ort();
        let text = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![3],
            data: encode_bytes_elements([b"ab".as_slice(), b"", "h\u{e9}".as_bytes()]),
        };
        let flags = Tensor {
            name: "b".into(),
            datatype: DataType::Bool,
            shape: vec![1, 3],
            data: Bytes::from_static(&[0, 1, 1]),
        };
        let cases = vec![
            flags,
            text,
            Tensor::from_values("u8", vec![2], &[0u8, 255]),
            Tensor::from_values("u16", vec![2], &[1u16, u16::MAX]),
            Tensor::from_values("u32", vec![1], &[7u32]),
            Tensor::from_values("u64", vec![1], &[u64::MAX]),
            Tensor::from_values("i8", vec![2], &[-1i8, 1]),
            Tensor::from_values("i16", vec![1], &[-300i16]),
            Tensor::from_values("i32", vec![2, 1], &[i32::MIN, 5]),
            Tensor::from_values("i64", vec![3], &[-1i64, 0, i64::MAX]),
            Tensor::from_values("f16", vec![2], &[half::f16::from_f32(1.5), half::f16::ZERO]),
            Tensor::from_values("f32", vec![2, 2], &[0.5f32, -1.0, 3.25, 1e-9]),
            Tensor::from_values("f64", vec![1], &[std::f64::consts::PI]),
            Tensor::from_values("bf16", vec![1], &[half::bf16::from_f32(-2.0)]),
        ];
        for t in cases {
            let value = to_ort_value(&t).unwrap_or_else(|e| panic!("{}: {e}", t.name));
            let back = from_ort_value(&t.name, &value).unwrap();
            assert_eq!(back, t, "{}", t.name);
        }
    }

    #[test]
    fn unaligned_bytes_are_fine() {
        ort();
        let mut buf = vec![0u8];
        for v in [1.0f32, 2.0, 3.0] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let t = Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![3],
            // Offset by one byte: not 4-aligned.
            data: Bytes::from(buf).slice(1..),
        };
        let back = from_ort_value("x", &to_ort_value(&t).unwrap()).unwrap();
        assert_eq!(back.to_values::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn bad_bytes_are_invalid_input_not_a_panic() {
        ort();
        let not_utf8 = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![1],
            data: encode_bytes_elements([[0xffu8, 0xfe].as_slice()]),
        };
        assert!(matches!(
            to_ort_value(&not_utf8),
            Err(WorkerError::InvalidInput(_))
        ));
        let short = Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![2],
            data: Bytes::from_static(&[0; 5]),
        };
        assert!(matches!(
            to_ort_value(&short),
            Err(WorkerError::InvalidInput(_))
        ));
        let odd_bool = Tensor {
            name: "b".into(),
            datatype: DataType::Bool,
            shape: vec![1],
            data: Bytes::from_static(&[7]),
        };
        let back = from_ort_value("b", &to_ort_value(&odd_bool).unwrap()).unwrap();
        assert_eq!(&back.data[..], &[1]);
    }

    #[test]
    fn zeros_fill_dynamic_dims_with_one() {
        let t = zeros(&TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 64],
        });
        assert_eq!(t.shape, vec![1, 64]);
        assert_eq!(t.to_values::<f32>().unwrap(), vec![0.0; 64]);

        let s = zeros(&TensorSpec {
            name: "text".into(),
            datatype: DataType::Bytes,
            shape: vec![-1, 2],
        });
        assert_eq!(s.bytes_elements().unwrap(), vec![b"".as_slice(), b""]);
    }
}
