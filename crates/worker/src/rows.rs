//! Joining wire tensors along dimension 0 and splitting them back by rows.
//!
//! ONNX Runtime sessions do not use these (they join straight into the typed input buffer and
//! split straight from the output buffer, see `convert`); they back [`crate::pool::Runner`]'s
//! default batch run, which stand-in runners in tests use, and say what a batch means.

use chorus_common::{DataType, Tensor};

/// Rows (dimension 0) of a tensor whose shape has one; `None` for scalars.
pub fn rows_of(tensor: &Tensor) -> Option<usize> {
    tensor
        .shape
        .first()
        .and_then(|&rows| usize::try_from(rows).ok())
}

/// Concatenates `parts` (same name, datatype and non-batch dimensions) along dimension 0.
pub fn join(parts: &[&Tensor]) -> Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to join")?;
    if first.shape.is_empty() {
        return Err(format!(
            "'{}' is a scalar: it has no rows to join",
            first.name
        ));
    }
    let mut rows = 0i64;
    for part in parts {
        if part.name != first.name
            || part.datatype != first.datatype
            || part.shape.get(1..) != first.shape.get(1..)
        {
            return Err(format!(
                "cannot join '{}' {} {:?} with '{}' {} {:?}",
                first.name, first.datatype, first.shape, part.name, part.datatype, part.shape
            ));
        }
        rows += part.shape[0];
    }
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    // The BYTES layout (length-prefixed elements) concatenates as well as fixed-size values.
    for part in parts {
        data.extend_from_slice(&part.data);
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Ok(Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data: data.into(),
    })
}

/// Splits `tensor` into consecutive pieces of `rows` rows each. Fails when its dimension 0 is
/// not the sum of `rows` (the tensor is not batch-major) or its bytes do not add up.
pub fn split(tensor: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>, String> {
    let total: usize = rows.iter().sum();
    if rows_of(tensor) != Some(total) {
        return Err(format!(
            "output '{}' has shape {:?}, whose first dimension is not the batch's {total} rows",
            tensor.name, tensor.shape
        ));
    }
    let per_row: usize = tensor.shape[1..]
        .iter()
        .map(|&d| d.max(0) as usize)
        .product();
    let piece = |n: usize, data: bytes::Bytes| {
        let mut shape = tensor.shape.clone();
        shape[0] = n as i64;
        Tensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype,
            shape,
            data,
        }
    };
    let mut pieces = Vec::with_capacity(rows.len());
    match tensor.datatype.element_size() {
        Some(size) => {
            tensor.check_byte_size().map_err(|e| e.to_string())?;
            let mut at = 0;
            for &n in rows {
                let bytes = n * per_row * size;
                // A slice of the same buffer: no copy.
                pieces.push(piece(n, tensor.data.slice(at..at + bytes)));
                at += bytes;
            }
        }
        None => {
            debug_assert_eq!(tensor.datatype, DataType::Bytes);
            let elements = tensor.bytes_elements().map_err(|e| e.to_string())?;
            let mut at = 0;
            for &n in rows {
                let mine = &elements[at..at + n * per_row];
                pieces.push(piece(
                    n,
                    chorus_common::tensor::encode_bytes_elements(mine.iter().copied()),
                ));
                at += n * per_row;
            }
        }
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_common::tensor::encode_bytes_elements;

    #[test]
    fn join_then_split_gives_the_parts_back() {
        let a = Tensor::from_values("x", vec![1, 2], &[1.0f32, 2.0]);
        let b = Tensor::from_values("x", vec![2, 2], &[3.0f32, 4.0, 5.0, 6.0]);
        let joined = join(&[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(
            joined.to_values::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(split(&joined, &[1, 2]).unwrap(), vec![a, b]);
    }

    #[test]
    fn bytes_tensors_join_and_split_by_element() {
        let s = |shape: Vec<i64>, items: &[&[u8]]| Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape,
            data: encode_bytes_elements(items.iter().copied()),
        };
        let a = s(vec![1], &[b"ab"]);
        let b = s(vec![2], &[b"", b"xyz"]);
        let joined = join(&[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3]);
        assert_eq!(split(&joined, &[1, 2]).unwrap(), vec![a, b]);
    }

    #[test]
    fn mismatched_parts_and_non_batch_major_tensors_are_errors() {
        let a = Tensor::from_values("x", vec![1, 2], &[1.0f32, 2.0]);
        let wide = Tensor::from_values("x", vec![1, 3], &[1.0f32, 2.0, 3.0]);
        assert!(join(&[&a, &wide]).is_err());
        let ints = Tensor::from_values("x", vec![1, 2], &[1i32, 2]);
        assert!(join(&[&a, &ints]).is_err());
        let scalar = Tensor::from_values("x", vec![], &[1.0f32]);
        assert!(join(&[&scalar]).is_err());
        assert!(split(&scalar, &[1]).is_err());
        let e = split(&a, &[1, 1]).unwrap_err();
        assert!(e.contains("2 rows"), "{e}");
    }
}
