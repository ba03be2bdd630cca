//! Reading checkpoints: safetensors files (one, or shards with an index), tensor by tensor.
//!
//! Each tensor is read from disk straight into the buffer that becomes the burn tensor, in the
//! file's dtype: a bf16 checkpoint loads as bf16, and the whole model is never held twice. No
//! memory map is used (the workspace forbids `unsafe`); reading tensor by tensor keeps the peak
//! at one tensor above the model.
//!
//! Every read is recorded, so a loader can report keys the file has but the model never asked
//! for (a LoRA file passed as the base, a checkpoint of another architecture).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{DType, TensorData};

/// Problems with a checkpoint; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: no tensor `{key}`{hint}")]
    Missing { path: PathBuf, key: String, hint: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{key}` has dtype {dtype}, which unoflow does not load (F32, F16, BF16 are supported)")]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error("{path}: {count} tensors the model does not use, e.g. {examples}; is this the right checkpoint for this model?")]
    Unexpected { path: PathBuf, count: usize, examples: String },
}

pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    dtype_name: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// One safetensors file: its header parsed, its data read on demand.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    data_start: u64,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

fn dtype_of(name: &str) -> Option<(DType, usize)> {
    Some(match name {
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        "F64" => (DType::F64, 8),
        "I64" => (DType::I64, 8),
        "I32" => (DType::I32, 4),
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Reads and checks the header: it must describe tensors that lie within the file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| WeightsError::Io { path: path.to_path_buf(), source };
        let format = |message: String| WeightsError::Format { path: path.to_path_buf(), message };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| format(format!("{file_len} bytes is too short for a header")))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 || 8 + header_len > file_len {
            return Err(format(format!("header length {header_len} does not fit a file of {file_len} bytes (truncated?)")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| format(format!("header is not JSON ({e})")))?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (key, value) in json {
            if key == "__metadata__" {
                if let Some(m) = value.as_object() {
                    for (k, v) in m {
                        metadata.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                    }
                }
                continue;
            }
            let bad = |what: &str| format(format!("tensor `{key}`: {what}"));
            let dtype_name = value.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?.to_string();
            let shape: Vec<usize> = value
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("bad shape"))?;
            let offsets: Vec<u64> = value
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no data_offsets"))?
                .iter()
                .filter_map(|o| o.as_u64())
                .collect();
            let [start, end] = offsets[..] else { return Err(bad("bad data_offsets")) };
            if start > end || data_start + end > file_len {
                return Err(bad(&format!("data {start}..{end} lies outside the file ({file_len} bytes; truncated?)")));
            }
            let (dtype, width) = dtype_of(&dtype_name).unwrap_or((DType::U8, 0));
            if width > 0 && (end - start) as usize != shape.iter().product::<usize>() * width {
                return Err(bad(&format!("{} bytes do not hold a {dtype_name} tensor of shape {shape:?}", end - start)));
            }
            entries.insert(key, Entry { dtype, dtype_name, shape, start, end });
        }
        Ok(Self { path: path.to_path_buf(), data_start, entries, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// Reads one tensor in its own dtype.
    pub fn read(&self, key: &str) -> Result<TensorData> {
        let entry =
            self.entries.get(key).ok_or_else(|| WeightsError::Missing { path: self.path.clone(), key: key.into(), hint: String::new() })?;
        if dtype_of(&entry.dtype_name).is_none() {
            return Err(WeightsError::Dtype { path: self.path.clone(), key: key.into(), dtype: entry.dtype_name.clone() });
        }
        let io = |source| WeightsError::Io { path: self.path.clone(), source };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(self.data_start + entry.start)).map_err(io)?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(TensorData::from_bytes_vec(bytes, entry.shape.clone(), entry.dtype))
    }
}

/// A checkpoint: one or more safetensors files, keys unique across them.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
    read: Mutex<BTreeSet<String>>,
}

impl Checkpoint {
    /// A single file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_files(vec![SafetensorsFile::open(path)?])
    }

    /// Shards named by a `*.safetensors.index.json` (`weight_map`: key → file).
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read(index).map_err(|source| WeightsError::Io { path: index.into(), source })?;
        let json: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| WeightsError::Format { path: index.into(), message: format!("index is not JSON ({e})") })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| WeightsError::Format { path: index.into(), message: "no `weight_map` in the index".into() })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let dir = index.parent().unwrap_or(Path::new("."));
        let files = shards.into_iter().map(|s| SafetensorsFile::open(&dir.join(s))).collect::<Result<Vec<_>>>()?;
        Self::from_files(files)
    }

    fn from_files(files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for key in f.keys() {
                if let Some(j) = index.insert(key.to_string(), i) {
                    return Err(WeightsError::Format {
                        path: f.path.clone(),
                        message: format!("tensor `{key}` is also in {}", files[j].path.display()),
                    });
                }
            }
        }
        Ok(Self { files, index, read: Mutex::new(BTreeSet::new()) })
    }

    /// The first file's path, for messages.
    pub fn path(&self) -> &Path {
        self.files.first().map_or(Path::new("<empty checkpoint>"), |f| f.path())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.index.get(key).and_then(|&i| self.files[i].shape(key))
    }

    /// Reads `key`, checking its shape.
    pub fn read(&self, key: &str, shape: &[usize]) -> Result<TensorData> {
        let Some(&i) = self.index.get(key) else {
            let near: Vec<&str> = self.keys().filter(|k| k.ends_with(key.rsplit('.').next().unwrap_or(key))).take(3).collect();
            let hint = if near.is_empty() { String::new() } else { format!(" (it has e.g. {})", near.join(", ")) };
            return Err(WeightsError::Missing { path: self.path().to_path_buf(), key: key.into(), hint });
        };
        let file = &self.files[i];
        let found = file.shape(key).unwrap_or(&[]);
        if found != shape {
            return Err(WeightsError::Shape { path: file.path.clone(), key: key.into(), expected: shape.to_vec(), found: found.to_vec() });
        }
        self.read.lock().expect("read-set lock").insert(key.to_string());
        file.read(key)
    }

    /// Fails if the checkpoint holds tensors nobody read.
    pub fn check_all_read(&self) -> Result<()> {
        let read = self.read.lock().expect("read-set lock");
        let mut unused: Vec<&str> = self.keys().filter(|k| !read.contains(*k)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(WeightsError::Unexpected {
            path: self.path().to_path_buf(),
            count: unused.len(),
            examples: unused.iter().take(3).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Writes tensors as a safetensors file (little-endian, in their own dtypes), atomically: a
/// temporary sibling renamed into place.
pub fn write_safetensors(path: &Path, tensors: &[(String, TensorData)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let io = |source| WeightsError::Io { path: path.to_path_buf(), source };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0usize;
    for (name, data) in tensors {
        let dtype = match data.dtype {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            other => return Err(WeightsError::Dtype { path: path.to_path_buf(), key: name.clone(), dtype: format!("{other:?}") }),
        };
        let len = data.as_bytes().len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": data.shape.to_vec(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io)?);
    use std::io::Write;
    out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&text).map_err(io)?;
    for (_, data) in tensors {
        out.write_all(data.as_bytes()).map_err(io)?;
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Concatenates row-major tensors along their first dimension (e.g. q, k, v → qkv).
pub fn cat_rows(parts: Vec<TensorData>) -> TensorData {
    let dtype = parts[0].dtype;
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.as_bytes().len()).sum());
    for p in &parts {
        bytes.extend_from_slice(p.as_bytes());
    }
    TensorData::from_bytes_vec(bytes, shape, dtype)
}

/// Splits a row-major tensor into `n` equal parts along its first dimension.
pub fn split_rows(data: &TensorData, n: usize) -> Vec<TensorData> {
    let rows = data.shape[0] / n;
    let chunk = data.as_bytes().len() / n;
    let mut shape = data.shape.clone();
    shape[0] = rows;
    data.as_bytes().chunks(chunk).map(|c| TensorData::from_bytes_vec(c.to_vec(), shape.clone(), data.dtype)).collect()
}

/// Splits a row-major tensor along its first dimension into parts of `rows` rows each.
pub fn split_rows_by(data: &TensorData, rows: &[usize]) -> Vec<TensorData> {
    let row_bytes = data.as_bytes().len() / data.shape[0].max(1);
    let mut start = 0;
    rows.iter()
        .map(|&n| {
            let mut shape = data.shape.clone();
            shape[0] = n;
            let part = TensorData::from_bytes_vec(data.as_bytes()[start..start + n * row_bytes].to_vec(), shape, data.dtype);
            start += n * row_bytes;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn reads_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        write_file(&path, r#"{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"kind":"x"}}"#, &data);
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.files[0].metadata()["kind"], "x");
        let t = ckpt.read("a.weight", &[2, 2]).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let err = ckpt.read("a.weight", &[4]).unwrap_err().to_string();
        assert!(err.contains("has shape [2, 2], the model expects [4]"), "{err}");
        let err = ckpt.read("b.weight", &[4]).unwrap_err().to_string();
        assert!(err.contains("no tensor `b.weight`") && err.contains("a.weight"), "{err}");
        ckpt.check_all_read().unwrap();
    }

    #[test]
    fn truncated_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_file(&path, r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0u8; 8]);
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("outside the file") && err.contains("t.safetensors"), "{err}");
        std::fs::write(&path, b"hello, not a checkpoint at all").unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn rows_cat_and_split() {
        let a = TensorData::new(vec![1.0f32, 2.0], [1, 2]);
        let b = TensorData::new(vec![3.0f32, 4.0, 5.0, 6.0], [2, 2]);
        let ab = cat_rows(vec![a, b]);
        assert_eq!(ab.shape.as_slice(), [3, 2]);
        let parts = split_rows(&TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [4, 1]), 2);
        assert_eq!(parts[1].to_vec::<f32>().unwrap(), [3.0, 4.0]);
    }
}
