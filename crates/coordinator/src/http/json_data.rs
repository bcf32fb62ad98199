//! Conversion between OIP v2 JSON `data` arrays and raw little-endian tensor bytes.

use crate::infer::decode;
use bytes::Bytes;
use chorus_common::tensor::{Element, encode_bytes_elements};
use chorus_common::{DataType, Tensor};
use serde::Serialize;
use serde_json::Value;

/// Collects the leaves of a flat or nested (row-major) JSON array.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        leaf => out.push(leaf),
    }
}

/// The shape of a nested JSON array (`[]` for a leaf), or where it is ragged: every array at
/// one depth must have the same length and depth as its siblings.
pub fn nested_shape(value: &Value) -> Result<Vec<usize>, String> {
    let Value::Array(items) = value else {
        return Ok(Vec::new());
    };
    let mut inner: Option<Vec<usize>> = None;
    for (index, item) in items.iter().enumerate() {
        let shape = nested_shape(item)?;
        match &inner {
            None => inner = Some(shape),
            Some(first) if *first != shape => {
                return Err(format!(
                    "it is ragged: element {index} has shape {shape:?} where element 0 has {first:?}"
                ));
            }
            Some(_) => {}
        }
    }
    let mut shape = vec![items.len()];
    shape.extend(inner.unwrap_or_default());
    Ok(shape)
}

/// Encodes a JSON `data` value as the raw bytes of `datatype`; `expected` is the element count
/// the shape calls for.
pub fn encode(
    name: &str,
    datatype: DataType,
    data: &Value,
    expected: usize,
) -> Result<Bytes, String> {
    let mut leaves = Vec::with_capacity(expected.min(1 << 20));
    flatten(data, &mut leaves);
    if leaves.len() != expected {
        return Err(decode::element_count_mismatch(name, leaves.len(), expected).to_string());
    }
    let bad = |index: usize, wanted: &str| {
        format!(
            "input '{name}': data element {index} is {}, expected {wanted} for datatype {datatype}",
            leaves[index]
        )
    };
    macro_rules! ints {
        ($ty:ty) => {{
            let mut out = Vec::with_capacity(leaves.len() * std::mem::size_of::<$ty>());
            for (i, v) in leaves.iter().enumerate() {
                let x = v
                    .as_i64()
                    .and_then(|x| <$ty>::try_from(x).ok())
                    .or_else(|| v.as_u64().and_then(|x| <$ty>::try_from(x).ok()))
                    .ok_or_else(|| bad(i, concat!("an integer that fits ", stringify!($ty))))?;
                x.write_le(&mut out);
            }
            out
        }};
    }
    macro_rules! floats {
        ($conv:expr) => {{
            let mut out = Vec::with_capacity(leaves.len() * 8);
            for (i, v) in leaves.iter().enumerate() {
                let x = v.as_f64().ok_or_else(|| bad(i, "a number"))?;
                $conv(x).write_le(&mut out);
            }
            out
        }};
    }
    let bytes = match datatype {
        DataType::Bool => leaves
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_bool()
                    .map(u8::from)
                    .ok_or_else(|| bad(i, "true or false"))
            })
            .collect::<Result<Vec<u8>, _>>()?,
        DataType::Uint8 => ints!(u8),
        DataType::Uint16 => ints!(u16),
        DataType::Uint32 => ints!(u32),
        DataType::Uint64 => ints!(u64),
        DataType::Int8 => ints!(i8),
        DataType::Int16 => ints!(i16),
        DataType::Int32 => ints!(i32),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => floats!(half::f16::from_f64),
        DataType::Bf16 => floats!(half::bf16::from_f64),
        DataType::Fp32 => floats!(|x: f64| x as f32),
        DataType::Fp64 => floats!(|x: f64| x),
        DataType::Bytes => {
            let strings = leaves
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::as_bytes)
                        .ok_or_else(|| bad(i, "a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(encode_bytes_elements(strings));
        }
    };
    Ok(Bytes::from(bytes))
}

/// A tensor's values, typed for JSON output (f32 prints in its shortest form, not as f64).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum JsonData {
    Bool(Vec<bool>),
    Unsigned(Vec<u64>),
    Signed(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Text(Vec<String>),
}

impl JsonData {
    /// How many values it holds.
    pub fn count(&self) -> usize {
        match self {
            JsonData::Bool(v) => v.len(),
            JsonData::Unsigned(v) => v.len(),
            JsonData::Signed(v) => v.len(),
            JsonData::Fp32(v) => v.len(),
            JsonData::Fp64(v) => v.len(),
            JsonData::Text(v) => v.len(),
        }
    }
}

/// Decodes a tensor's bytes for a JSON response.
pub fn decode(tensor: &Tensor) -> Result<JsonData, String> {
    fn widen<T: Element, U: From<T>>(t: &Tensor) -> Result<Vec<U>, String> {
        Ok(t.to_values::<T>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(U::from)
            .collect())
    }
    Ok(match tensor.datatype {
        DataType::Bool => {
            tensor.check_byte_size().map_err(|e| e.to_string())?;
            JsonData::Bool(tensor.data.iter().map(|&b| b != 0).collect())
        }
        DataType::Uint8 => JsonData::Unsigned(widen::<u8, u64>(tensor)?),
        DataType::Uint16 => JsonData::Unsigned(widen::<u16, u64>(tensor)?),
        DataType::Uint32 => JsonData::Unsigned(widen::<u32, u64>(tensor)?),
        DataType::Uint64 => JsonData::Unsigned(widen::<u64, u64>(tensor)?),
        DataType::Int8 => JsonData::Signed(widen::<i8, i64>(tensor)?),
        DataType::Int16 => JsonData::Signed(widen::<i16, i64>(tensor)?),
        DataType::Int32 => JsonData::Signed(widen::<i32, i64>(tensor)?),
        DataType::Int64 => JsonData::Signed(widen::<i64, i64>(tensor)?),
        DataType::Fp16 => JsonData::Fp32(widen::<half::f16, f32>(tensor)?),
        DataType::Bf16 => JsonData::Fp32(widen::<half::bf16, f32>(tensor)?),
        DataType::Fp32 => JsonData::Fp32(widen::<f32, f32>(tensor)?),
        DataType::Fp64 => JsonData::Fp64(widen::<f64, f64>(tensor)?),
        DataType::Bytes => JsonData::Text(
            tensor
                .bytes_elements()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_encode_the_same() {
        let flat = encode("x", DataType::Fp32, &json!([1.0, 2.0, 3.0, 4.0]), 4).unwrap();
        let nested = encode("x", DataType::Fp32, &json!([[1.0, 2.0], [3.0, 4.0]]), 4).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(&flat[..4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn ragged_or_misshapen_nesting_is_refused() {
        assert_eq!(
            nested_shape(&json!([[1, 2], [3, 4], [5, 6]])).unwrap(),
            vec![3, 2]
        );
        assert_eq!(nested_shape(&json!(7)).unwrap(), Vec::<usize>::new());
        let e = nested_shape(&json!([[1, 2], [3]])).unwrap_err();
        assert!(e.contains("ragged") && e.contains("element 1"), "{e}");
    }

    #[test]
    fn counts_and_types_are_checked() {
        assert!(
            encode("x", DataType::Fp32, &json!([1.0]), 2)
                .unwrap_err()
                .contains("calls for 2")
        );
        assert!(
            encode("x", DataType::Fp32, &json!(["a"]), 1)
                .unwrap_err()
                .contains("a number")
        );
        assert!(encode("x", DataType::Uint8, &json!([256]), 1).is_err());
        assert!(encode("x", DataType::Int8, &json!([-129]), 1).is_err());
        assert!(encode("x", DataType::Int64, &json!([1.5]), 1).is_err());
        assert!(encode("x", DataType::Bool, &json!([1]), 1).is_err());
        assert_eq!(
            encode("x", DataType::Uint64, &json!([u64::MAX]), 1)
                .unwrap()
                .len(),
            8
        );
    }

    #[test]
    fn bytes_and_bools_encode() {
        let b = encode("s", DataType::Bytes, &json!(["hi", ""]), 2).unwrap();
        assert_eq!(&b[..], &[2, 0, 0, 0, b'h', b'i', 0, 0, 0, 0]);
        let t = encode("b", DataType::Bool, &json!([true, false]), 2).unwrap();
        assert_eq!(&t[..], &[1, 0]);
    }

    #[test]
    fn decode_prints_f32_shortest() {
        let t = Tensor::from_values("p", vec![2], &[0.1f32, 2.5]);
        let text = serde_json::to_string(&decode(&t).unwrap()).unwrap();
        assert_eq!(text, "[0.1,2.5]");
        let l = Tensor::from_values("l", vec![2], &[-3i64, 9]);
        assert_eq!(
            serde_json::to_string(&decode(&l).unwrap()).unwrap(),
            "[-3,9]"
        );
    }
}
