//! The weights of an ONNX file: the float tensors among its graph's initializers, read
//! straight from the protobuf (ModelProto → GraphProto → TensorProto) without an ONNX
//! runtime or generated code. Only what small fixed-architecture models need (Silero VAD):
//! the graph itself is not interpreted, the model's code is written by hand.
//!
//! Every length, count and tensor size is checked against the bytes that are there before
//! anything is allocated, so a truncated or hostile file is an error naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Larger files are refused before they are read: the models this reader is for weigh a
/// few megabytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// A float tensor: its dims and values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// The float initializers of an ONNX file's main graph, by name.
#[derive(Debug)]
pub struct OnnxWeights {
    path: PathBuf,
    tensors: HashMap<String, OnnxTensor>,
}

/// TensorProto.DataType.FLOAT.
const FLOAT: u64 = 1;

impl OnnxWeights {
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::format(path, "is a directory, not an ONNX file"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes: larger than any model this reader is for ({MAX_FILE_BYTES} bytes)",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of an ONNX file; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::format(path, format!("not a readable ONNX model: {msg}"));
        let mut graph = None;
        let mut model = Fields::new(bytes);
        while let Some((field, value)) = model.next().map_err(bad)? {
            if field == 7 {
                graph = Some(value.bytes().map_err(|e| bad(format!("graph: {e}")))?);
            }
        }
        let graph = graph.ok_or_else(|| bad("it has no graph".into()))?;
        let mut tensors = HashMap::new();
        let mut fields = Fields::new(graph);
        while let Some((field, value)) = fields.next().map_err(bad)? {
            if field != 5 {
                continue;
            }
            let proto = value.bytes().map_err(|e| bad(format!("initializer: {e}")))?;
            if let Some((name, tensor)) = read_tensor(proto).map_err(bad)? {
                tensors.insert(name, tensor);
            }
        }
        Ok(OnnxWeights {
            path: path.to_path_buf(),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor `name`, which must have exactly `dims`.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<&[f32]> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("tensor {name} is missing")))?;
        if t.dims != dims {
            return Err(Error::format(
                &self.path,
                format!("tensor {name} has shape {:?}, expected {dims:?}", t.dims),
            ));
        }
        Ok(&t.data)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// A TensorProto's name and values, or `None` for tensors that are not floats (shape
/// constants and the like, which the hand-written models do not need).
fn read_tensor(proto: &[u8]) -> Result<Option<(String, OnnxTensor)>, String> {
    let mut dims: Vec<u64> = Vec::new();
    let mut data_type = 0;
    let mut name = String::new();
    let mut raw: Option<&[u8]> = None;
    let mut floats: Vec<f32> = Vec::new();
    let mut external = false;
    let mut fields = Fields::new(proto);
    while let Some((field, value)) = fields.next()? {
        match (field, value) {
            (1, Value::Varint(d)) => dims.push(d),
            (1, Value::Bytes(packed)) => {
                let mut p = Fields::new(packed);
                while p.pos < packed.len() {
                    dims.push(p.varint()?);
                }
            }
            (2, Value::Varint(t)) => data_type = t,
            (8, Value::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
            (9, Value::Bytes(b)) => raw = Some(b),
            (4, Value::Bytes(packed)) => {
                if !packed.len().is_multiple_of(4) {
                    return Err(format!("float_data of {} bytes", packed.len()));
                }
                floats.extend(
                    packed
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            (4, Value::Fixed32(bits)) => floats.push(f32::from_bits(bits)),
            (13, _) => external = true,
            _ => {}
        }
    }
    if data_type != FLOAT {
        return Ok(None);
    }
    if external {
        return Err(format!(
            "tensor {name} keeps its data in an external file, which is not supported"
        ));
    }
    if dims.len() > 8 {
        return Err(format!("tensor {name} has {} dimensions", dims.len()));
    }
    let count = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("tensor {name}: dims {dims:?} overflow"))?;
    let data = match raw {
        Some(raw) => {
            if Some(raw.len()) != count.checked_mul(4) {
                return Err(format!(
                    "tensor {name} declares {count} floats ({dims:?}) but holds {} bytes",
                    raw.len()
                ));
            }
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        None => {
            if floats.len() != count {
                return Err(format!(
                    "tensor {name} declares {count} floats ({dims:?}) but holds {}",
                    floats.len()
                ));
            }
            floats
        }
    };
    let dims = dims.into_iter().map(|d| d as usize).collect();
    Ok(Some((name, OnnxTensor { dims, data })))
}

/// A protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    fn bytes(self) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err("expected a length-delimited field".into()),
        }
    }
}

/// The fields of one protobuf message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let rest = self.buf.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest)
            .ok_or_else(|| format!("a field declares {n} bytes at byte {} but {rest} remain", self.pos))?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            other => return Err(format!("wire type {other} of field {field} at byte {}", self.pos)),
        };
        Ok(Some((field, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// A model with one graph holding the given TensorProtos as initializers.
    fn model(tensors: &[Vec<u8>]) -> Vec<u8> {
        let mut graph = Vec::new();
        for t in tensors {
            field_bytes(5, t, &mut graph);
        }
        let mut m = Vec::new();
        varint(1 << 3, &mut m); // ir_version
        varint(8, &mut m);
        field_bytes(7, &graph, &mut m);
        m
    }

    fn tensor(name: &str, dims: &[u64], data_type: u64, raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint(1 << 3, &mut t);
            varint(d, &mut t);
        }
        varint(2 << 3, &mut t);
        varint(data_type, &mut t);
        field_bytes(8, name.as_bytes(), &mut t);
        field_bytes(9, raw, &mut t);
        t
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_float_initializers_and_skips_the_rest() {
        let bytes = model(&[
            tensor("w", &[2, 3], FLOAT, &floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            tensor("shape", &[2], 7, &[0; 16]),
        ]);
        let w = OnnxWeights::parse(&bytes, Path::new("m.onnx")).unwrap();
        assert_eq!(w.tensor("w", &[2, 3]).unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(w.names().count(), 1);
        let e = w.tensor("w", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("m.onnx: tensor w has shape [2, 3], expected [3, 2]"), "{e}");
        let e = w.tensor("v", &[1]).unwrap_err().to_string();
        assert!(e.contains("tensor v is missing"), "{e}");
    }

    #[test]
    fn hostile_sizes_are_errors_before_allocating() {
        let p = Path::new("bad.onnx");
        // A tensor whose dims promise 2^60 floats but hold 8 bytes.
        let bytes = model(&[tensor("w", &[1 << 30, 1 << 30], FLOAT, &[0; 8])]);
        let e = OnnxWeights::parse(&bytes, p).unwrap_err().to_string();
        assert!(e.contains("bad.onnx") && e.contains("declares"), "{e}");
        // Dims whose product overflows.
        let bytes = model(&[tensor("w", &[u64::MAX, 3], FLOAT, &[0; 8])]);
        let e = OnnxWeights::parse(&bytes, p).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
        // A length field past the end of the file.
        let mut bytes = model(&[tensor("w", &[1], FLOAT, &[0; 4])]);
        bytes.truncate(bytes.len() - 2);
        let e = OnnxWeights::parse(&bytes, p).unwrap_err().to_string();
        assert!(e.contains("declares") && e.contains("remain"), "{e}");
        // No graph at all, and a varint that never ends.
        let e = OnnxWeights::parse(&[8, 1], p).unwrap_err().to_string();
        assert!(e.contains("no graph"), "{e}");
        let e = OnnxWeights::parse(&[0xff; 12], p).unwrap_err().to_string();
        assert!(e.contains("varint"), "{e}");
        // Not protobuf at all.
        let e = OnnxWeights::parse(b"RIFF\x24\0\0\0WAVE", p).unwrap_err().to_string();
        assert!(e.contains("not a readable ONNX model"), "{e}");
    }
}
