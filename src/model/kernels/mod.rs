//! CPU kernels of our own, for shapes and operations candle's CPU back-end handles badly, one
//! file per kernel family:
//!
//! - `rows`: dense layers with few rows (a short query), as dot products that read the
//!   weights once;
//! - `elementwise`: GELU (erf form) and softmax, branch-free so that they vectorise;
//! - `packed`: dense layers with weights packed once at load into panels streamed by a
//!   register-tiled AVX-512 kernel, with the bias, GELU or residual applied in registers;
//! - `norm`: LayerNorm over rows;
//! - `attention`: attention without the `[batch, heads, t, t]` score tensor.
//!
//! Each picks AVX-512 or AVX2+FMA at run time and keeps a portable path; the tests compare
//! every kernel with a plain definition on ragged shapes.

mod attention;
mod elementwise;
mod norm;
mod packed;
mod rows;

pub use attention::{attention, attention_strided};
pub use elementwise::{
    fast_elementwise, gelu_erf_grad_inplace, gelu_erf_inplace, softmax_rows_inplace,
};
pub use norm::layer_norm_rows_inplace;
pub(crate) use norm::layer_norm_rows_serial;
pub(crate) use packed::{for_each_panel_range, TileAt, PANEL_AHEAD};
pub use packed::{linear_packed, linear_packed_with, Epilogue, PackedWeights};
pub use rows::{linear_rows, SMALL_ROWS};

// Shared between the families: lane width and reduction, the exp polynomial and GELU body.
use elementwise::{gelu_body, softmax_body, EXP_POLY, LN2_HI, LN2_LO};
use rows::{reduce, L};

/// Which vector unit the element-wise kernels use: 2 AVX-512, 1 AVX2+FMA, 0 neither.
pub(crate) fn simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return 2;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return 1;
        }
    }
    0
}

/// Whether [`linear_packed`] can run here.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, which is `Sync`).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint regions (see `for_each_panel_range`, `attention`, `ffn_i8`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
