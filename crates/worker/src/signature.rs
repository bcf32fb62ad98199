//! Maps ONNX Runtime's element types and session inputs/outputs to Chorus's `DataType`/`TensorSpec`.

use chorus_common::{DataType, TensorSpec};
use ort::value::{Outlet, TensorElementType, ValueType};

/// Chorus's name for an ORT element type; `None` for types Chorus cannot carry (complex, 4-bit,
/// 8-bit floats).
pub fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The ORT element type carrying a Chorus datatype (the inverse of [`datatype_of`]).
pub fn element_type_of(dt: DataType) -> TensorElementType {
    match dt {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Bytes => TensorElementType::String,
    }
}

/// The spec of one session input or output, or a message naming the tensor and its type.
pub fn tensor_spec(outlet: &Outlet) -> Result<TensorSpec, String> {
    let unsupported = || {
        format!(
            "tensor '{}' has type {}, which Chorus cannot serve (supported: tensors of bool, integers, fp16/bf16/fp32/fp64 and strings)",
            outlet.name(),
            outlet.dtype()
        )
    };
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: outlet.name().to_string(),
            datatype: datatype_of(*ty).ok_or_else(unsupported)?,
            // ORT reports symbolic and unknown dims as -1; anything negative means "any size".
            shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        }),
        ValueType::Sequence(inner) if matches!(**inner, ValueType::Map { .. }) => {
            Err(zipmap(outlet.name()))
        }
        ValueType::Map { .. } => Err(zipmap(outlet.name())),
        _ => Err(unsupported()),
    }
}

/// What to do about a ZipMap output (skl2onnx's default `output_probability`, a sequence of
/// maps from class to probability): Chorus carries tensors only, and the same exporter writes
/// one when asked.
fn zipmap(name: &str) -> String {
    format!(
        "output '{name}' is a sequence of maps (skl2onnx's ZipMap), which Chorus cannot serve; \
         export the classifier with ZipMap off, e.g. `to_onnx(clf, X, options={{id(clf): {{'zipmap': False}}}})` \
         (or `convert_sklearn(..., options={{id(clf): {{'zipmap': False}}}})`), which makes the \
         probabilities a float tensor [N, classes] named 'probabilities'"
    )
}

/// Specs of every outlet, in the session's declared order.
pub fn tensor_specs(outlets: &[Outlet]) -> Result<Vec<TensorSpec>, String> {
    outlets.iter().map(tensor_spec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::value::{Shape, SymbolicDimensions};

    #[test]
    fn every_datatype_round_trips() {
        for dt in DataType::ALL {
            assert_eq!(datatype_of(element_type_of(dt)), Some(dt), "{dt}");
        }
    }

    #[test]
    fn exotic_ort_types_are_unsupported() {
        for ty in [
            TensorElementType::Complex64,
            TensorElementType::Float8E4M3FN,
            TensorElementType::Int4,
            TensorElementType::Undefined,
        ] {
            assert_eq!(datatype_of(ty), None, "{ty:?}");
        }
    }

    #[test]
    fn outlets_map_to_specs_with_dynamic_dims() {
        let outlet = Outlet::new(
            "input",
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape: Shape::new([-1, 64]),
                dimension_symbols: SymbolicDimensions::empty(2),
            },
        );
        assert_eq!(
            tensor_spec(&outlet).unwrap(),
            TensorSpec {
                name: "input".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 64],
            }
        );
    }

    #[test]
    fn maps_and_odd_types_are_refused_by_name() {
        let map = Outlet::new(
            "output_probability",
            ValueType::Sequence(Box::new(ValueType::Map {
                key: TensorElementType::Int64,
                value: TensorElementType::Float32,
            })),
        );
        let e = tensor_spec(&map).unwrap_err();
        assert!(e.contains("output_probability"), "{e}");
        assert!(e.contains("ZipMap") && e.contains("'zipmap': False"), "{e}");
        let complex = Outlet::new(
            "z",
            ValueType::Tensor {
                ty: TensorElementType::Complex64,
                shape: Shape::new([2]),
                dimension_symbols: SymbolicDimensions::empty(1),
            },
        );
        assert!(tensor_spec(&complex).unwrap_err().contains("'z'"));
    }
}
