//! A reader for PyTorch checkpoints (`pytorch_model.bin`), in both layouts torch has written:
//!
//! * the zip layout (torch >= 1.6): `archive/data.pkl` holds the pickled state dict and
//!   `archive/data/<key>` the raw bytes of each storage;
//! * the legacy layout (older checkpoints such as Bio_ClinicalBERT's): one stream of five
//!   pickles (magic number, protocol version, system info, the state dict, the list of storage
//!   keys) followed by each storage as an i64 element count and its raw bytes.
//!
//! candle's own reader handles only the zip layout (and its `LONG1` decoder overflows on the
//! legacy magic number), so we carry a small pickle machine of our own. It never executes
//! anything: globals are recorded by name, and only the few torch rebuild functions a state
//! dict uses are interpreted. Mutation through the memo is not modelled (values are copied),
//! which is enough for state dicts: their dicts are filled right after they are created.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// One pickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A global reference `module.name` (never imported, only named).
    Global(String, String),
    /// The result of calling `callable(*args)` (REDUCE / NEWOBJ), left unevaluated.
    Call(Box<Value>, Box<Value>),
    /// An object `obj` whose state was set with BUILD.
    Build(Box<Value>, Box<Value>),
    /// A reference to out-of-band data (torch storages).
    Persistent(Box<Value>),
    Mark,
}

impl Value {
    fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global(m, n) if m == module && n == name)
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
}

/// Reads one pickle (up to its STOP opcode) from `r`.
///
/// `max_len` bounds every length prefix so that a corrupt file yields an error, not a huge
/// allocation.
pub fn read_pickle<R: BufRead>(r: &mut R, max_len: u64) -> std::result::Result<Value, String> {
    let mut stack: Vec<Value> = Vec::with_capacity(256);
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let mut metastack: Vec<Vec<Value>> = Vec::new();

    fn rd<R: Read, const N: usize>(r: &mut R) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        r.read_exact(&mut b)
            .map_err(|e| format!("truncated pickle: {e}"))?;
        Ok(b)
    }
    fn rd_vec<R: Read>(r: &mut R, n: u64, max: u64) -> std::result::Result<Vec<u8>, String> {
        if n > max {
            return Err(format!("length {n} exceeds the file size"));
        }
        let mut b = vec![0u8; n as usize];
        r.read_exact(&mut b)
            .map_err(|e| format!("truncated pickle: {e}"))?;
        Ok(b)
    }
    fn rd_line<R: BufRead>(r: &mut R) -> std::result::Result<String, String> {
        let mut s = String::new();
        r.read_line(&mut s)
            .map_err(|e| format!("bad text line: {e}"))?;
        if !s.ends_with('\n') {
            return Err("truncated pickle".into());
        }
        s.pop();
        Ok(s)
    }
    fn utf8(b: Vec<u8>) -> std::result::Result<String, String> {
        String::from_utf8(b).map_err(|_| "string is not UTF-8".to_string())
    }
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    };
    fn pop_mark(
        stack: &mut Vec<Value>,
        metastack: &mut Vec<Vec<Value>>,
    ) -> std::result::Result<Vec<Value>, String> {
        let outer = metastack.pop().ok_or("MARK missing")?;
        Ok(std::mem::replace(stack, outer))
    }

    loop {
        let [op] = rd::<_, 1>(r)?;
        match op {
            0x80 => {
                rd::<_, 1>(r)?; // PROTO
            }
            0x95 => {
                rd::<_, 8>(r)?; // FRAME
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => metastack.push(std::mem::take(&mut stack)),
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack, &mut metastack)?;
            }
            b'2' => {
                let top = stack.last().cloned().ok_or("DUP on empty stack")?;
                stack.push(top)
            }
            b'c' => {
                let module = rd_line(r)?;
                let name = rd_line(r)?;
                stack.push(Value::Global(module, name))
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'J' => stack.push(Value::Int(i32::from_le_bytes(rd(r)?) as i64)),
            b'K' => stack.push(Value::Int(rd::<_, 1>(r)?[0] as i64)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(rd(r)?) as i64)),
            b'I' => {
                let line = rd_line(r)?;
                stack.push(match line.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                })
            }
            b'L' => {
                let line = rd_line(r)?;
                let s = line.trim_end_matches('L');
                // Integers beyond i64 only occur in headers we do not interpret.
                stack.push(Value::Int(s.parse().unwrap_or(i64::MAX)))
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    rd::<_, 1>(r)?[0] as u64
                } else {
                    u32::from_le_bytes(rd(r)?) as u64
                };
                let bytes = rd_vec(r, n, max_len)?;
                // Two's complement little-endian. Wider than 8 bytes (torch's magic number)
                // cannot be an i64: keep the low bits, which is all a comparison needs.
                let mut v: i64 = 0;
                for (i, b) in bytes.iter().take(8).enumerate() {
                    v |= (*b as i64) << (8 * i);
                }
                if bytes.len() < 8 && bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    v -= 1i64 << (8 * bytes.len());
                }
                stack.push(Value::Int(v))
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(rd(r)?))),
            b'F' => {
                let line = rd_line(r)?;
                stack.push(Value::Float(line.parse().map_err(|_| "bad FLOAT")?))
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'X' => {
                let n = u32::from_le_bytes(rd(r)?) as u64;
                stack.push(Value::Str(utf8(rd_vec(r, n, max_len)?)?))
            }
            0x8c => {
                let n = rd::<_, 1>(r)?[0] as u64;
                stack.push(Value::Str(utf8(rd_vec(r, n, max_len)?)?))
            }
            0x8d => {
                let n = u64::from_le_bytes(rd(r)?);
                stack.push(Value::Str(utf8(rd_vec(r, n, max_len)?)?))
            }
            b'V' => stack.push(Value::Str(rd_line(r)?)),
            b'T' => {
                let n = i32::from_le_bytes(rd(r)?).max(0) as u64;
                stack.push(Value::Str(
                    String::from_utf8_lossy(&rd_vec(r, n, max_len)?).into(),
                ))
            }
            b'U' => {
                let n = rd::<_, 1>(r)?[0] as u64;
                stack.push(Value::Str(
                    String::from_utf8_lossy(&rd_vec(r, n, max_len)?).into(),
                ))
            }
            b'S' => {
                let line = rd_line(r)?;
                stack.push(Value::Str(
                    line.trim_matches(|c| c == '\'' || c == '"').to_string(),
                ))
            }
            b'B' => {
                let n = u32::from_le_bytes(rd(r)?) as u64;
                stack.push(Value::Bytes(rd_vec(r, n, max_len)?))
            }
            b'C' => {
                let n = rd::<_, 1>(r)?[0] as u64;
                stack.push(Value::Bytes(rd_vec(r, n, max_len)?))
            }
            b')' => stack.push(Value::Tuple(vec![])),
            b't' => {
                let items = pop_mark(&mut stack, &mut metastack)?;
                stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items))
            }
            b']' => stack.push(Value::List(vec![])),
            b'l' => {
                let items = pop_mark(&mut stack, &mut metastack)?;
                stack.push(Value::List(items))
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err("APPEND to a non-list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, &mut metastack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err("APPENDS to a non-list".into()),
                }
            }
            b'}' => stack.push(Value::Dict(vec![])),
            b'd' => {
                let items = pop_mark(&mut stack, &mut metastack)?;
                stack.push(Value::Dict(pairs(items)?))
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err("SETITEM on a non-dict".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut metastack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(pairs(items)?),
                    _ => return Err("SETITEMS on a non-dict".into()),
                }
            }
            b'q' => {
                let id = rd::<_, 1>(r)?[0] as u64;
                memo.insert(id, stack.last().cloned().ok_or("PUT on empty stack")?);
            }
            b'r' => {
                let id = u32::from_le_bytes(rd(r)?) as u64;
                memo.insert(id, stack.last().cloned().ok_or("PUT on empty stack")?);
            }
            b'p' => {
                let id = rd_line(r)?.parse().map_err(|_| "bad PUT")?;
                memo.insert(id, stack.last().cloned().ok_or("PUT on empty stack")?);
            }
            0x94 => {
                let id = memo.len() as u64;
                memo.insert(id, stack.last().cloned().ok_or("MEMOIZE on empty stack")?);
            }
            b'h' | b'j' | b'g' => {
                let id = match op {
                    b'h' => rd::<_, 1>(r)?[0] as u64,
                    b'j' => u32::from_le_bytes(rd(r)?) as u64,
                    _ => rd_line(r)?.parse().map_err(|_| "bad GET")?,
                };
                stack.push(
                    memo.get(&id)
                        .cloned()
                        .ok_or_else(|| format!("memo {id} missing"))?,
                )
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                // An OrderedDict is rebuilt as a plain dict so that SETITEMS can fill it.
                let empty_args = matches!(&args, Value::Tuple(a) if a.is_empty());
                if empty_args
                    && (callable.is_global("collections", "OrderedDict")
                        || callable.is_global("collections", "defaultdict"))
                {
                    stack.push(Value::Dict(vec![]))
                } else {
                    stack.push(Value::Call(Box::new(callable), Box::new(args)))
                }
            }
            b'b' => {
                let state = pop(&mut stack)?;
                let obj = pop(&mut stack)?;
                match obj {
                    // A dict's BUILD state is its attributes (e.g. `_metadata`): not items.
                    d @ Value::Dict(_) => stack.push(d),
                    obj => stack.push(Value::Build(Box::new(obj), Box::new(state))),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Value::Persistent(Box::new(pid)))
            }
            b'P' => stack.push(Value::Persistent(Box::new(Value::Str(rd_line(r)?)))),
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}

fn pairs(items: Vec<Value>) -> std::result::Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Where a tensor's elements live: a storage key plus the view geometry.
#[derive(Debug, Clone)]
struct TensorRef {
    storage_key: String,
    /// `None` for integer tensors, which are skipped.
    dtype: Option<DType>,
    elem_size: usize,
    /// Element offset of the storage itself inside its root storage (legacy views).
    storage_offset: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The element type of a torch storage class and its size in bytes. Integer storages (buffers
/// such as `position_ids`) are never loaded, but their sizes are needed to walk a legacy file.
fn storage_type(v: &Value) -> std::result::Result<(Option<DType>, usize), String> {
    let name = match v {
        Value::Global(_, n) => n.as_str(),
        Value::Str(s) => s.as_str(),
        other => return Err(format!("unexpected storage type {other:?}")),
    };
    Ok(match name {
        "FloatStorage" => (Some(DType::F32), 4),
        "DoubleStorage" => (Some(DType::F64), 8),
        "HalfStorage" => (Some(DType::F16), 2),
        "BFloat16Storage" => (Some(DType::BF16), 2),
        "LongStorage" => (None, 8),
        "IntStorage" => (None, 4),
        "ShortStorage" => (None, 2),
        "ByteStorage" | "CharStorage" | "BoolStorage" => (None, 1),
        other => return Err(format!("unsupported storage type {other}")),
    })
}

/// Interprets one state-dict value as a tensor reference (None for non-tensor entries).
fn tensor_ref(v: &Value) -> std::result::Result<Option<TensorRef>, String> {
    let Value::Call(callable, args) = v else {
        return Ok(None);
    };
    let Value::Global(module, name) = callable.as_ref() else {
        return Ok(None);
    };
    let args = args.items().unwrap_or(&[]);
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            args.first().map_or(Ok(None), tensor_ref)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, type, args, state): the tensor is func(*args).
            match (args.first(), args.get(2)) {
                (Some(f), Some(a)) => {
                    tensor_ref(&Value::Call(Box::new(f.clone()), Box::new(a.clone())))
                }
                _ => Ok(None),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{name} with {} arguments", args.len()));
            }
            let Value::Persistent(pid) = &args[0] else {
                return Err("tensor without a storage reference".into());
            };
            let pid = pid.items().ok_or("storage reference is not a tuple")?;
            // ('storage', storage_type, key, location, numel[, view_metadata])
            if pid.len() < 5 || pid[0].as_str() != Some("storage") {
                return Err(format!("unexpected storage reference {pid:?}"));
            }
            let (dtype, elem_size) = storage_type(&pid[1])?;
            let storage_key = pid[2]
                .as_str()
                .ok_or("storage key is not a string")?
                .to_string();
            // Legacy storage views carry (view_key, element offset, view_size) into the root
            // storage named by `storage_key`.
            let storage_offset = match pid.get(5) {
                Some(Value::Tuple(view)) => {
                    view.get(1).and_then(Value::as_int).unwrap_or(0) as usize
                }
                _ => 0,
            };
            let offset = args[1].as_int().ok_or("tensor offset is not an int")? as usize;
            let ints = |v: &Value| -> std::result::Result<Vec<usize>, String> {
                v.items()
                    .ok_or("tensor size is not a tuple")?
                    .iter()
                    .map(|x| {
                        x.as_int()
                            .map(|i| i as usize)
                            .ok_or_else(|| "non-integer size".to_string())
                    })
                    .collect()
            };
            let size = ints(&args[2])?;
            let stride = ints(&args[3])?;
            if size.len() != stride.len() {
                return Err("tensor size and stride disagree".into());
            }
            Ok(Some(TensorRef {
                storage_key,
                dtype,
                elem_size,
                storage_offset,
                offset,
                size,
                stride,
            }))
        }
        _ => Ok(None),
    }
}

/// Finds the state dict inside the top-level object: the object itself, or a
/// `{"state_dict": ...}` / `{"model": ...}` wrapper as training scripts often save.
fn state_dict(obj: Value) -> std::result::Result<Vec<(String, Value)>, String> {
    let Value::Dict(items) = obj else {
        return Err("the checkpoint's top-level object is not a dict".into());
    };
    let has_tensors = items
        .iter()
        .any(|(_, v)| matches!(tensor_ref(v), Ok(Some(_))));
    if !has_tensors {
        for (k, v) in &items {
            if matches!(
                k.as_str(),
                Some("state_dict") | Some("model") | Some("module")
            ) {
                if let Value::Dict(_) = v {
                    return state_dict(v.clone());
                }
            }
        }
    }
    Ok(items
        .into_iter()
        .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
        .collect())
}

/// Gathers a strided view out of raw little-endian storage bytes into a contiguous tensor.
fn materialise(r: &TensorRef, storage: &[u8]) -> std::result::Result<Tensor, String> {
    let es = r.elem_size;
    let dtype = r.dtype.ok_or("not a floating-point tensor")?;
    let numel: usize = r.size.iter().product();
    let base = r.storage_offset + r.offset;
    // The furthest element this view touches must exist in the storage.
    let last = base
        + r.size
            .iter()
            .zip(&r.stride)
            .map(|(s, st)| s.saturating_sub(1) * st)
            .sum::<usize>();
    if numel > 0 && (last + 1) * es > storage.len() {
        return Err(format!(
            "tensor view reaches element {last} but its storage holds {}",
            storage.len() / es
        ));
    }
    let mut bytes = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; r.size.len()];
    for _ in 0..numel {
        let pos = base + idx.iter().zip(&r.stride).map(|(i, s)| i * s).sum::<usize>();
        bytes.extend_from_slice(&storage[pos * es..(pos + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < r.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::from_raw_buffer(&bytes, dtype, &r.size, &Device::Cpu).map_err(|e| e.to_string())
}

/// Reads every floating-point tensor of a `pytorch_model.bin` (either layout) on the CPU.
/// Integer buffers (such as `position_ids`) are skipped: a BERT has no integer parameters.
pub fn read_pytorch_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| bad("file too short to be a checkpoint".into()))?;
    drop(file);
    let (entries, storages) = if &magic == b"PK\x03\x04" {
        read_zip(path, file_len).map_err(bad)?
    } else if magic[0] == 0x80 {
        read_legacy(path, file_len).map_err(bad)?
    } else {
        return Err(bad(
            "neither a zip nor a legacy pickle PyTorch checkpoint".into()
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, r) in entries {
        if r.dtype.is_none() {
            continue;
        }
        let storage = storages
            .get(&r.storage_key)
            .ok_or_else(|| bad(format!("storage {} of {name} is missing", r.storage_key)))?;
        let t = materialise(&r, storage).map_err(|e| bad(format!("{name}: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

type Parsed = (Vec<(String, TensorRef)>, HashMap<String, Vec<u8>>);

fn collect_refs(obj: Value) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let mut refs = vec![];
    for (name, v) in state_dict(obj)? {
        if let Some(r) = tensor_ref(&v).map_err(|e| format!("{name}: {e}"))? {
            refs.push((name, r));
        }
    }
    Ok(refs)
}

fn read_zip(path: &Path, file_len: u64) -> std::result::Result<Parsed, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .ok_or("zip checkpoint without data.pkl")?
        .to_string();
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| e.to_string())?;
        read_pickle(&mut std::io::BufReader::new(entry), file_len)?
    };
    let refs = collect_refs(obj)?;
    let mut storages = HashMap::new();
    for (_, r) in &refs {
        if storages.contains_key(&r.storage_key) {
            continue;
        }
        let mut entry = zip
            .by_name(&format!("{prefix}data/{}", r.storage_key))
            .map_err(|e| format!("storage {}: {e}", r.storage_key))?;
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        storages.insert(r.storage_key.clone(), buf);
    }
    Ok((refs, storages))
}

/// torch's legacy magic number, as its low 64 bits (see `read_pickle`'s LONG1).
const LEGACY_MAGIC_LOW: i64 = 0x1950_a86a_20f9_469c_fc6c_u128 as u64 as i64;

fn read_legacy(path: &Path, file_len: u64) -> std::result::Result<Parsed, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(file);
    let magic = read_pickle(&mut r, file_len)?;
    if magic.as_int() != Some(LEGACY_MAGIC_LOW) {
        return Err("not a PyTorch checkpoint (bad magic number)".into());
    }
    let _protocol = read_pickle(&mut r, file_len)?;
    let _sys_info = read_pickle(&mut r, file_len)?;
    let obj = read_pickle(&mut r, file_len)?;
    let keys = read_pickle(&mut r, file_len)?;
    let keys: Vec<String> = keys
        .items()
        .ok_or("storage key list missing")?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| "storage key is not a string".to_string())
        })
        .collect::<std::result::Result<_, _>>()?;
    let refs = collect_refs(obj)?;
    let elem_size: HashMap<&str, usize> = refs
        .iter()
        .map(|(_, r)| (r.storage_key.as_str(), r.elem_size))
        .collect();
    let mut storages = HashMap::new();
    for key in &keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)
            .map_err(|_| format!("storage {key} is truncated"))?;
        let numel = i64::from_le_bytes(n);
        // Walking the file needs every storage's element size: a storage that no tensor
        // names cannot be skipped safely.
        let es = *elem_size
            .get(key.as_str())
            .ok_or_else(|| format!("storage {key} belongs to no tensor of the state dict"))?;
        let len = (numel.max(0) as u64).saturating_mul(es as u64);
        if len > file_len {
            return Err(format!(
                "storage {key} claims {len} bytes, more than the file holds"
            ));
        }
        let mut buf = vec![0u8; len as usize];
        r.read_exact(&mut buf)
            .map_err(|_| format!("storage {key} is truncated"))?;
        storages.insert(key.clone(), buf);
    }
    Ok((refs, storages))
}
