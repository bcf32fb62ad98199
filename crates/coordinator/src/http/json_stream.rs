//! OIP v2 JSON `data` decoded as it is read: each element goes straight into the tensor's byte
//! buffer, typed for its datatype, with the element count checked against the shape's as it
//! grows and the nesting checked for raggedness on the way. No `serde_json::Value` tree is built,
//! so a request costs about its own size in memory, and a body with more elements than its
//! shape calls for is refused at the first element too many.

use crate::http::parameters::quote;
use crate::infer::decode;
use bytes::Bytes;
use chorus_common::DataType;
use chorus_common::tensor::Element;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use std::fmt;

/// Decodes the JSON text `raw` (an input's `data`) as `expected` elements of `datatype` for an
/// input named `name` of shape `shape`.
pub fn decode(
    name: &str,
    datatype: DataType,
    raw: &str,
    shape: &[i64],
    expected: usize,
) -> Result<Bytes, String> {
    // At most one element per two bytes of JSON (`0,`): never preallocate more than the body
    // can hold, whatever the declared shape says.
    let capacity = expected.min(raw.len() / 2 + 1) * datatype.element_size().unwrap_or(1);
    let mut sink = Sink {
        name,
        datatype,
        expected,
        out: Vec::with_capacity(capacity),
        count: 0,
        dims: Vec::new(),
        leaf_depth: None,
        error: None,
    };
    let mut json = serde_json::Deserializer::from_str(raw);
    let parsed = Level {
        sink: &mut sink,
        depth: 0,
    }
    .deserialize(&mut json)
    .and_then(|()| json.end());
    if let Some(error) = sink.error.take() {
        return Err(error);
    }
    parsed.map_err(|e| format!("input '{name}': `data` is not valid JSON: {e}"))?;
    if sink.count != expected {
        return Err(decode::element_count_mismatch(name, sink.count, expected).to_string());
    }
    let depth = sink.leaf_depth.unwrap_or(0);
    let nested: Vec<usize> = sink.dims[..depth].iter().map(|d| d.unwrap_or(0)).collect();
    if nested.len() > 1 && nested.len() == shape.len() {
        let declared: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if nested != declared {
            return Err(format!(
                "input '{name}': nested `data` has shape {nested:?} but the input's shape is {shape:?}"
            ));
        }
    }
    Ok(Bytes::from(sink.out))
}

/// Where decoded elements go, and what has been seen of the nesting.
struct Sink<'n> {
    name: &'n str,
    datatype: DataType,
    expected: usize,
    out: Vec<u8>,
    count: usize,
    /// The length of the arrays at each depth (all arrays at one depth must agree).
    dims: Vec<Option<usize>>,
    /// The depth at which elements sit (all must sit at the same one).
    leaf_depth: Option<usize>,
    /// Why decoding stopped, in words for the client (serde's own error only carries a
    /// position).
    error: Option<String>,
}

/// A leaf value as the JSON had it.
enum Leaf<'v> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(&'v str),
    Other(&'static str),
}

impl fmt::Display for Leaf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leaf::Bool(b) => write!(f, "{b}"),
            Leaf::Int(n) => write!(f, "{n}"),
            Leaf::Uint(n) => write!(f, "{n}"),
            Leaf::Float(x) => write!(f, "{x}"),
            Leaf::Text(s) => write!(f, "{}", quote(&format!("{s:?}"))),
            Leaf::Other(what) => f.write_str(what),
        }
    }
}

impl Sink<'_> {
    fn fail<E: de::Error>(&mut self, message: String) -> E {
        let error = E::custom(&message);
        self.error = Some(message);
        error
    }

    fn ragged<E: de::Error>(&mut self, detail: String) -> E {
        let message = format!("input '{}': `data` is ragged: {detail}", self.name);
        self.fail(message)
    }

    /// One element at `depth`.
    fn leaf<E: de::Error>(&mut self, depth: usize, leaf: Leaf<'_>) -> Result<(), E> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(self.ragged(format!(
                    "element {} sits {depth} arrays deep where the first sits {d}",
                    self.count
                )));
            }
            Some(_) => {}
        }
        if self.count == self.expected {
            let message = format!(
                "input '{}' has more than {} data elements but its shape calls for {}",
                self.name, self.expected, self.expected
            );
            return Err(self.fail(message));
        }
        let index = self.count;
        self.count += 1;
        self.write(&leaf).map_err(|wanted| {
            let message = format!(
                "input '{}': data element {index} is {leaf}, expected {wanted} for datatype {}",
                self.name, self.datatype
            );
            self.fail(message)
        })
    }

    /// Appends `leaf` as the datatype's bytes, or says what was wanted instead.
    fn write(&mut self, leaf: &Leaf<'_>) -> Result<(), &'static str> {
        let out = &mut self.out;
        macro_rules! int {
            ($ty:ty) => {{
                let value = match *leaf {
                    Leaf::Int(n) => <$ty>::try_from(n).ok(),
                    Leaf::Uint(n) => <$ty>::try_from(n).ok(),
                    _ => None,
                };
                value
                    .ok_or(concat!("an integer that fits ", stringify!($ty)))?
                    .write_le(out);
            }};
        }
        let number = || match *leaf {
            Leaf::Int(n) => Ok(n as f64),
            Leaf::Uint(n) => Ok(n as f64),
            Leaf::Float(x) => Ok(x),
            _ => Err("a number"),
        };
        match self.datatype {
            DataType::Bool => match *leaf {
                Leaf::Bool(b) => out.push(u8::from(b)),
                _ => return Err("true or false"),
            },
            DataType::Uint8 => int!(u8),
            DataType::Uint16 => int!(u16),
            DataType::Uint32 => int!(u32),
            DataType::Uint64 => int!(u64),
            DataType::Int8 => int!(i8),
            DataType::Int16 => int!(i16),
            DataType::Int32 => int!(i32),
            DataType::Int64 => int!(i64),
            DataType::Fp16 => half::f16::from_f64(number()?).write_le(out),
            DataType::Bf16 => half::bf16::from_f64(number()?).write_le(out),
            DataType::Fp32 => (number()? as f32).write_le(out),
            DataType::Fp64 => number()?.write_le(out),
            DataType::Bytes => match *leaf {
                // The BYTES wire form: each element's length (u32, little-endian), then it.
                Leaf::Text(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                _ => return Err("a string"),
            },
        }
        Ok(())
    }

    /// An array of `len` elements ended at `depth`.
    fn array_ended<E: de::Error>(&mut self, depth: usize, len: usize) -> Result<(), E> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(first) if first != len => {
                return Err(self.ragged(format!(
                    "an array {depth} deep has {len} elements where the first at that depth has {first}"
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Reads one value `depth` arrays deep.
struct Level<'s, 'n> {
    sink: &'s mut Sink<'n>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if let Some(leaf_depth) = self.sink.leaf_depth
            && depth >= leaf_depth
        {
            return Err(self.sink.ragged(format!(
                "an array sits {depth} arrays deep where elements sit {leaf_depth}"
            )));
        }
        let mut len = 0usize;
        while seq
            .next_element_seed(Level {
                sink: &mut *self.sink,
                depth: depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        self.sink.array_ended(depth, len)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Uint(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Text(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.sink.leaf(self.depth, Leaf::Other("null"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.sink.leaf(self.depth, Leaf::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(raw: &str, shape: &[i64]) -> Result<Vec<f32>, String> {
        let expected = shape.iter().product::<i64>() as usize;
        decode("x", DataType::Fp32, raw, shape, expected).map(|b| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }

    #[test]
    fn flat_and_nested_data_decode_alike() {
        assert_eq!(fp32("[1, 2.5, -3]", &[3]).unwrap(), [1.0, 2.5, -3.0]);
        assert_eq!(
            fp32("[[1, 2], [3, 4]]", &[2, 2]).unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(fp32("[1, 2, 3, 4]", &[2, 2]).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(fp32("7", &[1]).unwrap(), [7.0]);
        let ints = decode("i", DataType::Int8, "[-128, 127]", &[2], 2).unwrap();
        assert_eq!(ints.as_ref(), [0x80, 0x7f]);
        let text = decode("s", DataType::Bytes, r#"["ab", "\u00e9"]"#, &[2], 2).unwrap();
        assert_eq!(text.as_ref(), b"\x02\0\0\0ab\x02\0\0\0\xc3\xa9");
        let flags = decode("b", DataType::Bool, "[true, false]", &[2], 2).unwrap();
        assert_eq!(flags.as_ref(), [1, 0]);
    }

    #[test]
    fn ragged_and_misshapen_data_is_refused() {
        let ragged = fp32(
            &format!("[[{}], [{}]]", ["0"; 63].join(","), ["0"; 65].join(",")),
            &[2, 64],
        );
        assert!(ragged.unwrap_err().contains("ragged"));
        assert!(fp32("[[1, 2], 3]", &[3]).unwrap_err().contains("ragged"));
        assert!(fp32("[1, [2, 3]]", &[3]).unwrap_err().contains("ragged"));
        let e = fp32("[[1, 2, 3], [4, 5, 6]]", &[3, 2]).unwrap_err();
        assert!(e.contains("nested `data` has shape [2, 3]"), "{e}");
        let e = fp32("[1, 2]", &[3]).unwrap_err();
        assert_eq!(e, "input 'x' has 2 data elements but its shape calls for 3");
    }

    #[test]
    fn too_many_elements_stop_at_the_first_one_over() {
        let e = fp32("[0, 0, 0, 0, 0, oops", &[4]).unwrap_err();
        assert_eq!(
            e,
            "input 'x' has more than 4 data elements but its shape calls for 4"
        );
    }

    #[test]
    fn wrong_elements_are_named_with_their_index() {
        let e = fp32(r#"[1, "x"]"#, &[2]).unwrap_err();
        assert_eq!(
            e,
            r#"input 'x': data element 1 is "x", expected a number for datatype FP32"#
        );
        let e = decode("i", DataType::Uint8, "[1, 256]", &[2], 2).unwrap_err();
        assert!(
            e.contains("element 1 is 256, expected an integer that fits u8"),
            "{e}"
        );
        let e = decode("i", DataType::Int32, "[1.5]", &[1], 1).unwrap_err();
        assert!(e.contains("element 0 is 1.5"), "{e}");
        assert!(
            fp32("[null]", &[1])
                .unwrap_err()
                .contains("element 0 is null")
        );
        assert!(fp32("[1,]", &[1]).unwrap_err().contains("not valid JSON"));
        assert!(
            fp32("[1] [2]", &[1])
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn a_huge_declared_shape_does_not_preallocate() {
        // 2^40 elements declared, three given: refused for the count, never allocated.
        let e = decode("x", DataType::Fp64, "[1,2,3]", &[1 << 40], 1 << 40).unwrap_err();
        assert!(e.contains("has 3 data elements"), "{e}");
    }
}
