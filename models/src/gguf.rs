//! GGUF (v2 and v3) reading: the header, the metadata key-value table and the tensor
//! infos, with every declared count, length and size checked against the bytes the file
//! actually holds *before* anything is allocated, so a truncated or hostile file is an
//! error naming the file and the problem, never a panic or a huge allocation.
//!
//! Tensors stay in the ggml block formats they were stored in: [`GgufFile::qtensor`]
//! hands them to candle as `QTensor`s, which `QMatMul` multiplies without dequantizing.
//! Format reference: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Tensor};

use crate::tokenizer::GgufVocab;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor's data lies in the file, already validated against the file size.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions outermost first (candle order; GGUF stores them innermost first).
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Exact size of the data in bytes.
    pub size: usize,
}

/// An opened, validated GGUF file. The file is memory-mapped; tensors are copied out of
/// the map on demand.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: HashMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// Name and candle type of a ggml type id, or the name of a type candle cannot run.
fn ggml_dtype(id: u32) -> std::result::Result<GgmlDType, String> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => {
            let name = match other {
                4 | 5 => "Q4_2/Q4_3, removed from ggml",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                39 => "MXFP4",
                _ => return Err(format!("unknown quantization type {other}")),
            };
            return Err(format!("quantization type {other} ({name}) is not supported"));
        }
    })
}

/// A bounds-checked little-endian reader over the mapped file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("{msg} (at byte {})", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes but the file has {} left",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        Ok(b.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A declared element count, refused when even the smallest encoding of that many
    /// elements could not fit in the rest of the file.
    fn count(&mut self, what: &str, min_elem_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_elem_size))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(self.err(format!(
                "{what} declares {n} entries but only {} bytes are left in the file (truncated or corrupt)",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(key)?),
            1 => MetaValue::I8(self.u8(key)? as i8),
            2 => MetaValue::U16(self.u16(key)?),
            3 => MetaValue::I16(self.u16(key)? as i16),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(self.u32(key)? as i32),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.u8(key)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("metadata {key}: invalid bool {b}"))),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("metadata {key}: arrays nested too deeply")));
                }
                let elem_ty = self.u32(key)?;
                let min = min_value_size(elem_ty)
                    .ok_or_else(|| self.err(format!("metadata {key}: unknown value type {elem_ty}")))?;
                let n = self.count(key, min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(self.u64(key)? as i64),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.err(format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes a value of this type can take, used to bound declared counts.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, tensor infos and that every
    /// tensor's data lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; model files are not expected to change while
        // loaded (the same assumption llama.cpp and candle make).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut cur = Cursor {
            bytes: &map,
            pos: 0,
            path,
        };
        let magic = cur.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(path, "not a GGUF file (bad magic)"));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("GGUF version {version} (supported: 2 and 3)"),
            ));
        }
        // A tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes,
        // a metadata entry at least 8 (key) + 4 (type) + 1 bytes.
        let n_tensors = cur.count("tensor count", 24)?;
        let n_meta = cur.count("metadata count", 13)?;
        let mut metadata = HashMap::with_capacity(n_meta);
        for _ in 0..n_meta {
            let key = cur.string("metadata key")?;
            let ty = cur.u32("metadata type")?;
            let value = cur.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && (8..=1 << 20).contains(&a) => a,
                _ => {
                    return Err(Error::format(path, format!("invalid general.alignment {v:?}")));
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = cur.string("tensor name")?;
            let n_dims = cur.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(cur.err(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = cur.u64("tensor dimension")?;
                let d = usize::try_from(d)
                    .ok()
                    .filter(|&d| d > 0)
                    .ok_or_else(|| cur.err(format!("tensor {name}: invalid dimension {d}")))?;
                dims.push(d);
            }
            let type_id = cur.u32("tensor type")?;
            let offset = cur.u64("tensor offset")?;
            infos.push((name, dims, type_id, offset));
        }
        let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut index = HashMap::with_capacity(n_tensors);
        for (name, mut dims, type_id, rel_offset) in infos {
            let dtype =
                ggml_dtype(type_id).map_err(|t| Error::unsupported(format!("{}: tensor {name}", path.display()), t))?;
            let elems = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::format(path, format!("tensor {name}: element count overflows")))?;
            if dims[0] % dtype.block_size() != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name}: row of {} elements is not a multiple of the {dtype:?} block size {}",
                        dims[0],
                        dtype.block_size()
                    ),
                ));
            }
            let size = (elems / dtype.block_size())
                .checked_mul(dtype.type_size())
                .ok_or_else(|| Error::format(path, format!("tensor {name}: byte size overflows")))?;
            if rel_offset % alignment != 0 {
                return Err(Error::format(
                    path,
                    format!("tensor {name}: offset {rel_offset} is not aligned to {alignment}"),
                ));
            }
            let start = data_start.checked_add(rel_offset);
            let end = start.and_then(|s| s.checked_add(size as u64));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    dims.reverse();
                    if index.insert(name.clone(), tensors.len()).is_some() {
                        return Err(Error::format(path, format!("tensor {name} appears twice")));
                    }
                    tensors.push(TensorInfo {
                        name,
                        dims,
                        dtype,
                        offset: start as usize,
                        size,
                    });
                }
                _ => {
                    let left = file_len.saturating_sub(start.unwrap_or(u64::MAX));
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor {name} declares {} but the file has {} left at its offset (truncated?)",
                            human_bytes(size as u64),
                            human_bytes(left)
                        ),
                    ));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &HashMap<String, MetaValue> {
        &self.metadata
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str, want: &str) -> Error {
        match self.metadata.get(key) {
            None => Error::format(&self.path, format!("metadata {key} is missing")),
            Some(v) => Error::format(&self.path, format!("metadata {key} is {v:?}, expected {want}")),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(MetaValue::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(MetaValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.missing(key, "an unsigned integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(MetaValue::as_f64)
            .ok_or_else(|| self.missing(key, "a number"))
    }

    /// `general.architecture`: `llama`, `qwen2`, `starcoder2`, ...
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| Error::format(&self.path, format!("tensor {name} is missing")))
    }

    /// The raw stored bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_err(name)?;
        Ok(&self.map[info.offset..info.offset + info.size])
    }

    /// A tensor in its stored (possibly quantized) format, copied onto `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.info_or_err(name)?;
        let bytes = &self.map[info.offset..info.offset + info.size];
        // candle reinterprets the bytes as blocks; all ggml block types need at most
        // 4-byte alignment, which the (>= 8) GGUF data alignment guarantees.
        debug_assert_eq!(bytes.as_ptr() as usize % 4, 0);
        let tensor = qtensor_from_ggml(info.dtype, bytes, info.dims.clone(), device)?;
        // The copy is what the model keeps; drop the mapped pages now so that loading does
        // not hold the file twice in memory (peak RSS ~ one copy of the weights).
        // SAFETY: a read-only file mapping that nothing writes to: MADV_DONTNEED only
        // discards page-table entries, and a later read faults the same bytes back in.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, info.offset, info.size)
        };
        Ok(tensor)
    }

    /// A 2-D tensor `[n, k]` in a block format `tessera_kernels` multiplies, repacked for
    /// it from the mapped file (`None` for other formats). As with [`GgufFile::qtensor`],
    /// the mapped pages are released right after.
    pub fn quantized_weight(&self, name: &str) -> Result<Option<tessera_kernels::QuantizedWeight>> {
        let info = self.info_or_err(name)?;
        let (Some(ty), &[n, k]) = (crate::weights::kernel_type(info.dtype), info.dims.as_slice()) else {
            return Ok(None);
        };
        let bytes = &self.map[info.offset..info.offset + info.size];
        let weight = tessera_kernels::QuantizedWeight::from_ggml(ty, bytes, n, k)
            .map_err(|e| Error::format(&self.path, format!("tensor {name}: {e}")))?;
        // SAFETY: as in `qtensor`.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, info.offset, info.size)
        };
        Ok(Some(weight))
    }

    /// A tensor dequantized to f32 on `device`.
    pub fn dequantized(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.qtensor(name, device)?.dequantize(device)?)
    }

    /// The tokenizer described by the `tokenizer.ggml.*` metadata.
    pub fn vocab(&self) -> Result<GgufVocab> {
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = self
                .get(key)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| self.missing(key, "an array"))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.missing(key, "an array of strings"))
                })
                .collect()
        };
        let opt_id = |key: &str| -> Result<Option<u32>> {
            match self.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| self.missing(key, "a token id")),
            }
        };
        let token_types = match self.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| self.missing("tokenizer.ggml.token_type", "an array"))?
                    .iter()
                    .map(|t| {
                        t.as_i64()
                            .and_then(|t| i32::try_from(t).ok())
                            .ok_or_else(|| self.missing("tokenizer.ggml.token_type", "an array of integers"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let scores = match self.get("tokenizer.ggml.scores") {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| self.missing("tokenizer.ggml.scores", "an array"))?
                    .iter()
                    .map(|t| {
                        t.as_f64()
                            .map(|f| f as f32)
                            .ok_or_else(|| self.missing("tokenizer.ggml.scores", "an array of numbers"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        Ok(GgufVocab {
            model: self.get_str("tokenizer.ggml.model")?.to_owned(),
            pre: self
                .get("tokenizer.ggml.pre")
                .and_then(MetaValue::as_str)
                .map(str::to_owned),
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types,
            scores,
            merges: if self.get("tokenizer.ggml.merges").is_some() {
                strings("tokenizer.ggml.merges")?
            } else {
                Vec::new()
            },
            bos_id: opt_id("tokenizer.ggml.bos_token_id")?,
            eos_id: opt_id("tokenizer.ggml.eos_token_id")?,
            eot_id: opt_id("tokenizer.ggml.eot_token_id")?,
            pad_id: opt_id("tokenizer.ggml.padding_token_id")?,
            unk_id: opt_id("tokenizer.ggml.unknown_token_id")?,
            add_bos: self.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool),
            add_space_prefix: self.get("tokenizer.ggml.add_space_prefix").and_then(MetaValue::as_bool),
        })
    }
}

/// `12 MiB`, `4.0 GiB`: sizes in error messages people can read.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
