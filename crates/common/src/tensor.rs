//! Tensors as they travel between processes: datatype, shape and raw little-endian bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Element types of the Open Inference Protocol v2, with their wire names (`"FP32"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    /// Variable-length byte strings; on the wire each element is a 4-byte little-endian length
    /// followed by that many bytes (the OIP binary extension's encoding).
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// The OIP v2 name of this type.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Size of one element in bytes; `None` for `BYTES`, whose elements vary in length.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// Whether values of this type can be NaN or infinite.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 | DataType::Bf16
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A datatype name that is not one of OIP v2's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown datatype '{0}': expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16, BYTES"
)]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|dt| dt.as_str() == s)
            .ok_or_else(|| UnknownDataType(s.to_string()))
    }
}

/// Why a shape or a tensor's bytes do not add up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("dimension {index} of '{name}' is {value}: dimensions must be positive")]
    NonPositiveDim {
        name: String,
        index: usize,
        value: i64,
    },
    #[error("shape {shape:?} of '{name}' has more elements than this server can address")]
    ShapeOverflow { name: String, shape: Vec<i64> },
    #[error(
        "'{name}' has shape {shape:?}, i.e. {expected} bytes of {datatype}, but {actual} bytes were given"
    )]
    ByteSizeMismatch {
        name: String,
        shape: Vec<i64>,
        datatype: DataType,
        expected: usize,
        actual: usize,
    },
    #[error("'{name}' holds {datatype}, not {wanted}")]
    WrongType {
        name: String,
        datatype: DataType,
        wanted: DataType,
    },
    #[error("BYTES tensor '{name}' is malformed: {reason}")]
    MalformedBytes { name: String, reason: String },
}

/// Number of elements in `shape`, with every dimension checked positive and the product checked
/// for overflow. A rank-0 shape holds one element.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, TensorError> {
    let mut count: usize = 1;
    for (index, &value) in shape.iter().enumerate() {
        if value <= 0 {
            return Err(TensorError::NonPositiveDim {
                name: name.to_string(),
                index,
                value,
            });
        }
        count = usize::try_from(value)
            .ok()
            .and_then(|dim| count.checked_mul(dim))
            .ok_or_else(|| TensorError::ShapeOverflow {
                name: name.to_string(),
                shape: shape.to_vec(),
            })?;
    }
    Ok(count)
}

/// Bytes a fixed-size tensor of `datatype` and `shape` occupies; `None` for `BYTES`.
pub fn fixed_byte_size(
    name: &str,
    datatype: DataType,
    shape: &[i64],
) -> Result<Option<usize>, TensorError> {
    let count = element_count(name, shape)?;
    match datatype.element_size() {
        None => Ok(None),
        Some(size) => count
            .checked_mul(size)
            .map(Some)
            .ok_or_else(|| TensorError::ShapeOverflow {
                name: name.to_string(),
                shape: shape.to_vec(),
            }),
    }
}

/// Picks `wanted` out of `all` by name, in the order wanted (all of them, as they are, when
/// `wanted` is empty). Moves the tensors, copies nothing; the error is the first name missing.
pub fn select_by_name(all: Vec<Tensor>, wanted: &[String]) -> Result<Vec<Tensor>, String> {
    if wanted.is_empty() {
        return Ok(all);
    }
    let mut all: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
    wanted
        .iter()
        .map(|name| {
            all.iter_mut()
                .find(|t| t.as_ref().is_some_and(|t| &t.name == name))
                .and_then(Option::take)
                .ok_or_else(|| name.clone())
        })
        .collect()
}

/// Element types that have a fixed-size little-endian encoding.
pub trait Element: Copy + Sized {
    const DATATYPE: DataType;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! numeric_element {
    ($ty:ty, $dt:expr) => {
        impl Element for $ty {
            const DATATYPE: DataType = $dt;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                <$ty>::from_le_bytes(bytes.try_into().expect("chunk has the element's size"))
            }
        }
    };
}

numeric_element!(u8, DataType::Uint8);
numeric_element!(u16, DataType::Uint16);
numeric_element!(u32, DataType::Uint32);
numeric_element!(u64, DataType::Uint64);
numeric_element!(i8, DataType::Int8);
numeric_element!(i16, DataType::Int16);
numeric_element!(i32, DataType::Int32);
numeric_element!(i64, DataType::Int64);
numeric_element!(f32, DataType::Fp32);
numeric_element!(f64, DataType::Fp64);
numeric_element!(half::f16, DataType::Fp16);
numeric_element!(half::bf16, DataType::Bf16);

/// A named tensor: datatype, shape and row-major little-endian bytes.
///
/// The bytes are a [`Bytes`] so that a slice of an HTTP body can travel to a worker without a copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl Tensor {
    /// Builds a tensor from typed values; the caller vouches that `shape` holds `values.len()`.
    pub fn from_values<T: Element>(name: impl Into<String>, shape: Vec<i64>, values: &[T]) -> Self {
        let mut data = Vec::with_capacity(std::mem::size_of_val(values));
        for &value in values {
            value.write_le(&mut data);
        }
        Tensor {
            name: name.into(),
            datatype: T::DATATYPE,
            shape,
            data: Bytes::from(data),
        }
    }

    /// Decodes the bytes as `T`, checking the datatype and the byte count against the shape.
    pub fn to_values<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if self.datatype != T::DATATYPE {
            return Err(TensorError::WrongType {
                name: self.name.clone(),
                datatype: self.datatype,
                wanted: T::DATATYPE,
            });
        }
        self.check_byte_size()?;
        let size = std::mem::size_of::<T>();
        Ok(self.data.chunks_exact(size).map(T::read_le).collect())
    }

    /// Number of elements the shape declares.
    pub fn element_count(&self) -> Result<usize, TensorError> {
        element_count(&self.name, &self.shape)
    }

    /// Checks that the bytes are exactly what the shape and datatype call for (for `BYTES`, that
    /// the length prefixes walk the buffer exactly, one element per shape slot).
    pub fn check_byte_size(&self) -> Result<(), TensorError> {
        match fixed_byte_size(&self.name, self.datatype, &self.shape)? {
            Some(expected) if expected != self.data.len() => Err(TensorError::ByteSizeMismatch {
                name: self.name.clone(),
                shape: self.shape.clone(),
                datatype: self.datatype,
                expected,
                actual: self.data.len(),
            }),
            Some(_) => Ok(()),
            None => self.bytes_elements().map(|_| ()),
        }
    }

    /// Splits a `BYTES` tensor into its elements.
    pub fn bytes_elements(&self) -> Result<Vec<&[u8]>, TensorError> {
        let malformed = |reason: String| TensorError::MalformedBytes {
            name: self.name.clone(),
            reason,
        };
        let count = self.element_count()?;
        let mut elements = Vec::with_capacity(count.min(1 << 16));
        let mut rest: &[u8] = &self.data;
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| malformed("a length prefix is cut short".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(malformed(format!(
                    "element {} claims {len} bytes but only {} remain",
                    elements.len(),
                    tail.len()
                )));
            }
            let (element, tail) = tail.split_at(len);
            elements.push(element);
            rest = tail;
        }
        if elements.len() != count {
            return Err(malformed(format!(
                "shape {:?} calls for {count} elements but {} were given",
                self.shape,
                elements.len()
            )));
        }
        Ok(elements)
    }
}

/// Encodes byte strings in the `BYTES` wire layout (4-byte LE length, then the bytes).
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = Vec::new();
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(dt.as_str().parse::<DataType>().unwrap(), dt);
        }
        assert!(
            "fp32".parse::<DataType>().is_err(),
            "names are case-sensitive"
        );
    }

    #[test]
    fn element_count_checks_dims_and_overflow() {
        assert_eq!(element_count("x", &[]).unwrap(), 1);
        assert_eq!(element_count("x", &[2, 3]).unwrap(), 6);
        assert!(matches!(
            element_count("x", &[2, 0]),
            Err(TensorError::NonPositiveDim { index: 1, .. })
        ));
        assert!(matches!(
            element_count("x", &[-1]),
            Err(TensorError::NonPositiveDim { .. })
        ));
        assert!(matches!(
            element_count("x", &[i64::MAX, i64::MAX]),
            Err(TensorError::ShapeOverflow { .. })
        ));
        assert!(matches!(
            fixed_byte_size("x", DataType::Fp64, &[1 << 61]),
            Err(TensorError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn typed_values_round_trip() {
        let t = Tensor::from_values("p", vec![2, 2], &[1.5f32, -2.0, 0.0, 3.25]);
        assert_eq!(t.data.len(), 16);
        assert_eq!(t.to_values::<f32>().unwrap(), vec![1.5, -2.0, 0.0, 3.25]);
        assert!(matches!(
            t.to_values::<i64>(),
            Err(TensorError::WrongType { .. })
        ));
        let labels = Tensor::from_values("l", vec![3], &[7i64, -1, 0]);
        assert_eq!(labels.to_values::<i64>().unwrap(), vec![7, -1, 0]);
    }

    #[test]
    fn byte_size_must_match_shape() {
        let mut t = Tensor::from_values("p", vec![2], &[1.0f32, 2.0]);
        t.shape = vec![3];
        assert!(matches!(
            t.check_byte_size(),
            Err(TensorError::ByteSizeMismatch {
                expected: 12,
                actual: 8,
                ..
            })
        ));
    }

    #[test]
    fn bytes_tensors_walk_their_prefixes() {
        let data = encode_bytes_elements([b"ab".as_slice(), b"".as_slice(), b"xyz".as_slice()]);
        let t = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![3],
            data,
        };
        assert_eq!(
            t.bytes_elements().unwrap(),
            vec![b"ab".as_slice(), b"", b"xyz"]
        );
        let short = Tensor {
            data: Bytes::from_static(&[5, 0, 0, 0, b'a']),
            shape: vec![1],
            ..t.clone()
        };
        assert!(short.check_byte_size().is_err());
        let wrong_count = Tensor {
            shape: vec![2],
            ..t
        };
        assert!(wrong_count.check_byte_size().is_err());
    }

    #[test]
    fn tensor_round_trips_through_bincode() {
        let t = Tensor::from_values("input", vec![1, 3], &[0.1f32, 0.2, 0.3]);
        let wire = bincode1::serialize(&t).unwrap();
        let back: Tensor = bincode1::deserialize(&wire).unwrap();
        assert_eq!(back, t);
    }
}
