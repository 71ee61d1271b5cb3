//! Device and dtype selection, and CPU start-up tuning.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N`, `metal` or `auto` (the first GPU this build supports and
/// the machine has, else the CPU). A GPU device in a build without its cargo feature is a
/// clear error naming the feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k.to_string(),
            n.parse::<usize>().map_err(|_| {
                Error::InvalidInput(format!("device ordinal {n:?} is not a number"))
            })?,
        ),
        None => (spec.clone(), 0),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            // A build with the feature on a machine without the GPU falls back to the CPU.
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(ordinal) {
                    return Ok(d);
                }
            }
            if cfg!(feature = "metal") {
                if let Ok(d) = Device::new_metal(ordinal) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        "cuda" | "gpu" => {
            if !cfg!(feature = "cuda") {
                return Err(Error::InvalidInput(
                    "device cuda: this clinsearch was built without the `cuda` feature (cargo build --features cuda)".into(),
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(Error::InvalidInput(
                    "device metal: this clinsearch was built without the `metal` feature (cargo build --features metal)".into(),
                ));
            }
            Ok(Device::new_metal(ordinal)?)
        }
        other => Err(Error::InvalidInput(format!(
            "device {other:?} (expected cpu, cuda, cuda:N, metal or auto)"
        ))),
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::InvalidInput(format!(
            "dtype {other:?} (expected f32, f16 or bf16)"
        ))),
    }
}

/// Parses what `--dtype` accepts: a candle dtype, or `int8` (f32 with int8 dense layers).
pub fn parse_precision(spec: &str) -> Result<(DType, bool)> {
    if spec.trim().eq_ignore_ascii_case("int8") {
        return Ok((DType::F32, true));
    }
    parse_dtype(spec)
        .map_err(|_| {
            Error::InvalidInput(format!(
                "dtype {:?} (expected f32, f16, bf16 or int8)",
                spec.trim()
            ))
        })
        .map(|d| (d, false))
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Keeps glibc from returning every large tensor buffer to the kernel.
///
/// By default glibc serves allocations above a dynamic threshold with fresh `mmap`s and
/// trims the heap eagerly, so each forward pass page-faults its activations in again:
/// measured here at ~20% of candle's CPU time (../shared/STACK-NOTES.md), and raising the
/// thresholds gave +40-50% embeddings/s with no growth in peak memory. Call once at start-up,
/// before threads allocate. No-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // M_MMAP_THRESHOLD = -3 (32 MiB is glibc's maximum), M_TRIM_THRESHOLD = -1,
        // M_TOP_PAD = -2.
        libc::mallopt(-3, 32 * 1024 * 1024);
        libc::mallopt(-1, 512 * 1024 * 1024);
        libc::mallopt(-2, 64 * 1024 * 1024);
    }
}

/// For training processes: never give freed memory back to the kernel, and serve large
/// blocks from the heap too. A training step allocates and frees its whole autograd graph
/// (gigabytes for all-MiniLM-L6-v2 at 16 x 128 tokens) and blocks above 32 MiB (the
/// vocabulary-sized gradients); with glibc's trimming and mmap the next step faults every
/// page of them in again, zero-filled by the kernel. The process then holds its peak
/// memory until it exits, which for a training run is its steady state anyway. Not for the
/// server. No-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // M_TRIM_THRESHOLD = -1 (-1: never trim), M_MMAP_MAX = -4 (0: no mmapped blocks).
        libc::mallopt(-1, -1);
        libc::mallopt(-4, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_the_cpu_without_a_gpu_back_end() {
        if cfg!(not(any(feature = "cuda", feature = "metal"))) {
            assert!(parse_device("auto").unwrap().is_cpu());
        }
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("auto"), "{e}");
    }
}
