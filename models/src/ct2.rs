//! Reader for CTranslate2 `model.bin` files (the format faster-whisper loads), binary
//! versions 4 to 6 (the layout written since CTranslate2 2.0; 6 is current).
//!
//! Layout, little-endian: u32 version; string spec name; u32 spec revision; u32 variable
//! count; per variable: string name, u8 rank, u32 dims\[rank\], u8 dtype (0 f32, 1 i8,
//! 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, the data; then u32 alias count and
//! (alias, target) string pairs. A string is a u16 length counting a trailing NUL, then
//! the bytes. Reference: CTranslate2 `src/models/model.cc` (`Model::load`) and
//! `python/ctranslate2/specs/model_spec.py` (`ModelSpec._serialize`).
//!
//! The file is memory-mapped and every count, length and size is checked against what is
//! left of the file before anything is allocated, so a truncated or hostile file is an
//! [`Error::Format`] naming the file, never a panic or a huge allocation. Tensors are
//! copied out on request; dropping the [`Ct2File`] releases the mapping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::{Error, Result};

/// Binary versions whose layout this reader implements.
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;

/// Largest rank accepted (CTranslate2 models use at most 4).
const MAX_RANK: usize = 8;

/// Element types of CTranslate2 variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::BF16,
            _ => return None,
        })
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::BF16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }
}

/// One stored variable: where its bytes are in the file.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: Ct2DType,
    offset: usize,
    len: usize,
}

/// An opened `model.bin`.
pub struct Ct2File {
    path: PathBuf,
    data: Mmap,
    version: u32,
    spec: String,
    revision: u32,
    variables: BTreeMap<String, Ct2Variable>,
    aliases: BTreeMap<String, String>,
}

impl std::fmt::Debug for Ct2File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2File")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("spec", &self.spec)
            .field("revision", &self.revision)
            .field("variables", &self.variables.len())
            .finish_non_exhaustive()
    }
}

/// A bounds-checked cursor over the file's bytes.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::format(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file has {} left",
                    self.pos,
                    self.left()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let at = self.pos;
        let b = self.take(n, what)?;
        match b.split_last() {
            Some((0, text)) => String::from_utf8(text.to_vec())
                .map_err(|_| Error::format(self.path, format!("{what} at offset {at} is not UTF-8"))),
            _ => Err(Error::format(
                self.path,
                format!("{what} at offset {at} is not a NUL-terminated string"),
            )),
        }
    }
}

impl Ct2File {
    /// Opens and indexes a `model.bin`; no tensor data is read yet.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a read-only map of a model file that is not modified while loaded.
        let data = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            path,
            bytes: &data,
            pos: 0,
        };
        let version = c.u32("the binary version")?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!(
                    "CTranslate2 binary version {version} (supported: {} to {})",
                    SUPPORTED_VERSIONS.start(),
                    SUPPORTED_VERSIONS.end()
                ),
            ));
        }
        let spec = c.string("the spec name")?;
        let revision = c.u32("the spec revision")?;
        let count = c.u32("the variable count")? as usize;
        let mut variables = BTreeMap::new();
        for i in 0..count {
            let name = c.string(&format!("the name of variable {i}"))?;
            let rank = c.u8(&format!("the rank of {name}"))? as usize;
            if rank > MAX_RANK {
                return Err(Error::format(path, format!("variable {name} has rank {rank}")));
            }
            let mut dims = Vec::with_capacity(rank);
            for _ in 0..rank {
                dims.push(c.u32(&format!("the shape of {name}"))? as usize);
            }
            let code = c.u8(&format!("the dtype of {name}"))?;
            let dtype = Ct2DType::from_code(code)
                .ok_or_else(|| Error::format(path, format!("variable {name} has unknown dtype {code}")))?;
            let len = c.u32(&format!("the byte count of {name}"))? as usize;
            let want = dims
                .iter()
                .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::format(path, format!("variable {name}: shape {dims:?} overflows")))?;
            if want != len {
                return Err(Error::format(
                    path,
                    format!("variable {name} of shape {dims:?} and {dtype:?} needs {want} bytes but declares {len}"),
                ));
            }
            if len > c.left() {
                return Err(Error::format(
                    path,
                    format!(
                        "variable {name} declares {len} bytes but the file has {} left (truncated?)",
                        c.left()
                    ),
                ));
            }
            let offset = c.pos;
            c.pos += len;
            let var = Ct2Variable {
                name: name.clone(),
                dims,
                dtype,
                offset,
                len,
            };
            if variables.insert(name.clone(), var).is_some() {
                return Err(Error::format(path, format!("variable {name} is stored twice")));
            }
        }
        let mut aliases = BTreeMap::new();
        let n_aliases = c.u32("the alias count")? as usize;
        for i in 0..n_aliases {
            let alias = c.string(&format!("alias {i}"))?;
            let target = c.string(&format!("the target of alias {alias}"))?;
            if !variables.contains_key(&target) {
                return Err(Error::format(
                    path,
                    format!("alias {alias} points to the missing variable {target}"),
                ));
            }
            aliases.insert(alias, target);
        }
        if c.left() != 0 {
            return Err(Error::format(
                path,
                format!("{} unexpected bytes after the alias table", c.left()),
            ));
        }
        Ok(Ct2File {
            path: path.to_path_buf(),
            data,
            version,
            spec,
            revision,
            variables,
            aliases,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The model spec's name (`WhisperSpec`, `TransformerSpec`, ...).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// Every stored variable name (aliases not included), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.variables.keys().map(String::as_str)
    }

    /// A variable by name or alias.
    pub fn variable(&self, name: &str) -> Option<&Ct2Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.variables.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.variable(name).is_some()
    }

    fn require(&self, name: &str) -> Result<&Ct2Variable> {
        self.variable(name)
            .ok_or_else(|| Error::format(&self.path, format!("variable {name} is missing")))
    }

    fn bytes(&self, v: &Ct2Variable) -> &[u8] {
        &self.data[v.offset..v.offset + v.len]
    }

    /// The shape of a variable, or an error naming the file when it is missing.
    pub fn dims(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.require(name)?.dims)
    }

    /// An integer scalar (CTranslate2 stores flags and head counts as 0-dim tensors).
    pub fn scalar_i64(&self, name: &str) -> Result<Option<i64>> {
        let Some(v) = self.variable(name) else {
            return Ok(None);
        };
        if v.dims.iter().product::<usize>() != 1 {
            return Err(Error::format(
                &self.path,
                format!("variable {name} should be a scalar but has shape {:?}", v.dims),
            ));
        }
        let b = self.bytes(v);
        Ok(Some(match v.dtype {
            Ct2DType::I8 => b[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            Ct2DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            Ct2DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            Ct2DType::F16 | Ct2DType::BF16 => {
                let t = Tensor::from_raw_buffer(b, float_dtype(v.dtype), &[], &Device::Cpu)?;
                t.to_dtype(DType::F32)?.to_scalar::<f32>()? as i64
            }
        }))
    }

    /// A floating-point variable of the expected shape as a tensor of `dtype` on `device`.
    /// Int8/int16 weights quantized by CTranslate2 (with a sibling `<name>_scale` holding
    /// one scale per row, or one for the whole matrix) are dequantized: `w = q / scale`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let v = self.require(name)?;
        if v.dims != shape {
            return Err(Error::format(
                &self.path,
                format!("variable {name} has shape {:?} but {shape:?} is expected", v.dims),
            ));
        }
        let bytes = self.bytes(v);
        let t = match v.dtype {
            Ct2DType::F32 | Ct2DType::F16 | Ct2DType::BF16 => {
                // CTranslate2 files are little-endian, as are candle's targets.
                Tensor::from_raw_buffer(bytes, float_dtype(v.dtype), shape, &Device::Cpu)?
            }
            Ct2DType::I8 | Ct2DType::I16 => self.dequantize(v, bytes)?,
            Ct2DType::I32 => {
                return Err(Error::format(
                    &self.path,
                    format!("variable {name} is int32, not a floating-point tensor"),
                ));
            }
        };
        let t = t.to_dtype(dtype)?.to_device(device)?;
        // As for GGUF: the tensor holds its own copy, so drop the mapped pages and keep peak
        // RSS near one copy of the weights.
        // SAFETY: a read-only file mapping that nothing writes to: MADV_DONTNEED only
        // discards page-table entries, and a later read faults the same bytes back in.
        let _ = unsafe {
            self.data
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, v.offset, v.len)
        };
        Ok(t)
    }

    fn dequantize(&self, v: &Ct2Variable, bytes: &[u8]) -> Result<Tensor> {
        let scale_name = format!("{}_scale", v.name);
        let scale = self.variable(&scale_name).ok_or_else(|| {
            Error::format(
                &self.path,
                format!("variable {} is {:?} without {scale_name}", v.name, v.dtype),
            )
        })?;
        let rows = v.dims.first().copied().unwrap_or(1);
        let numel: usize = v.dims.iter().product();
        let per_row = numel / rows.max(1);
        let scales: Vec<f32> = match scale.dtype {
            Ct2DType::F32 | Ct2DType::F16 | Ct2DType::BF16 => {
                let n: usize = scale.dims.iter().product();
                if n != 1 && n != rows {
                    return Err(Error::format(
                        &self.path,
                        format!("{scale_name} has shape {:?} for {} rows", scale.dims, rows),
                    ));
                }
                Tensor::from_raw_buffer(self.bytes(scale), float_dtype(scale.dtype), &[n], &Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .to_vec1()?
            }
            other => {
                return Err(Error::format(&self.path, format!("{scale_name} is {other:?}")));
            }
        };
        let q: Vec<f32> = match v.dtype {
            Ct2DType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .collect(),
        };
        let w: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let s = if scales.len() == 1 {
                    scales[0]
                } else {
                    scales[i / per_row.max(1)]
                };
                x / s
            })
            .collect();
        Ok(Tensor::from_vec(w, v.dims.as_slice(), &Device::Cpu)?)
    }
}

/// The candle type of a floating-point CTranslate2 type (callers match on those only).
fn float_dtype(d: Ct2DType) -> DType {
    match d {
        Ct2DType::F16 => DType::F16,
        Ct2DType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// Writes a `model.bin` (for tests and tools): variables as (name, dims, dtype code,
/// raw little-endian bytes), then aliases.
pub fn write_model_bin(
    version: u32,
    spec: &str,
    variables: &[(&str, &[usize], u8, &[u8])],
    aliases: &[(&str, &str)],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&version.to_le_bytes());
    string(&mut out, spec);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(variables.len() as u32).to_le_bytes());
    for (name, dims, code, data) in variables {
        string(&mut out, name);
        out.push(dims.len() as u8);
        for d in *dims {
            out.extend_from_slice(&(*d as u32).to_le_bytes());
        }
        out.push(*code);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (a, t) in aliases {
        string(&mut out, a);
        string(&mut out, t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn sample() -> Vec<u8> {
        let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let q: Vec<u8> = [10i8, -20, 30, 4, 8, -12].iter().map(|&x| x as u8).collect();
        let s = f32_bytes(&[10.0, 4.0]);
        write_model_bin(
            6,
            "TestSpec",
            &[
                ("a/weight", &[2, 3], 0, &w),
                ("heads", &[], 2, &7i16.to_le_bytes()),
                ("q/weight", &[2, 3], 1, &q),
                ("q/weight_scale", &[2], 0, &s),
            ],
            &[("b/weight", "a/weight")],
        )
    }

    fn err(bytes: &[u8]) -> String {
        let (_dir, path) = write(bytes);
        let e = Ct2File::open(&path).unwrap_err().to_string();
        assert!(e.contains("model.bin"), "the error names the file: {e}");
        e
    }

    #[test]
    fn reads_variables_scalars_aliases_and_int8() {
        let (_dir, path) = write(&sample());
        let f = Ct2File::open(&path).unwrap();
        assert_eq!((f.version(), f.spec(), f.revision()), (6, "TestSpec", 1));
        assert_eq!(
            f.names().collect::<Vec<_>>(),
            ["a/weight", "heads", "q/weight", "q/weight_scale"]
        );
        let t = f.tensor("b/weight", &[2, 3], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(f.scalar_i64("heads").unwrap(), Some(7));
        assert_eq!(f.scalar_i64("absent").unwrap(), None);
        let q = f.tensor("q/weight", &[2, 3], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(q.to_vec2::<f32>().unwrap(), [[1.0, -2.0, 3.0], [1.0, 2.0, -3.0]]);
        let e = f.tensor("a/weight", &[3, 2], DType::F32, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("has shape [2, 3] but [3, 2] is expected"), "{e}");
        let e = f.tensor("nope", &[1], DType::F32, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("variable nope is missing"), "{e}");
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let e = err(&bytes[..len]);
            assert!(e.contains("truncated") || e.contains("string"), "{len}: {e}");
        }
    }

    #[test]
    fn declared_size_beyond_the_file() {
        let mut bytes = write_model_bin(6, "S", &[("x", &[1 << 20], 0, &[])], &[]);
        // Make the byte count agree with the shape (4 MiB) while the file holds none.
        let at = bytes.len() - 4 - 4;
        bytes[at..at + 4].copy_from_slice(&(4u32 << 20).to_le_bytes());
        let e = err(&bytes);
        assert!(
            e.contains("variable x declares 4194304 bytes but the file has 4 left"),
            "{e}"
        );
        // A byte count that disagrees with the shape.
        let e = err(&write_model_bin(6, "S", &[("x", &[2], 0, &[0; 4])], &[]));
        assert!(e.contains("needs 8 bytes but declares 4"), "{e}");
        // Shapes whose product overflows.
        let huge = [u32::MAX as usize, u32::MAX as usize, u32::MAX as usize];
        let e = err(&write_model_bin(6, "S", &[("x", &huge, 0, &[])], &[]));
        assert!(e.contains("overflows"), "{e}");
    }

    #[test]
    fn bad_version_dtype_alias_and_trailing_bytes() {
        for v in [0, 3, 7, 0xFFFF_FFFF] {
            let e = err(&write_model_bin(v, "S", &[], &[]));
            assert!(e.contains(&format!("binary version {v}")), "{e}");
        }
        let e = err(&write_model_bin(6, "S", &[("x", &[1], 9, &[0])], &[]));
        assert!(e.contains("variable x has unknown dtype 9"), "{e}");
        let e = err(&write_model_bin(6, "S", &[], &[("a", "b")]));
        assert!(e.contains("alias a points to the missing variable b"), "{e}");
        let mut bytes = write_model_bin(6, "S", &[], &[]);
        bytes.push(0);
        assert!(err(&bytes).contains("1 unexpected bytes"));
        let e = err(&write_model_bin(
            6,
            "S",
            &[("x", &[1], 4, &[0, 0]), ("x", &[1], 4, &[0, 0])],
            &[],
        ));
        assert!(e.contains("stored twice"), "{e}");
    }
}
