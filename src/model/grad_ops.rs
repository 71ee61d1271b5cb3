//! Softmax, LayerNorm, GELU and cross-entropy as single differentiable operations, for
//! training on the CPU.
//!
//! candle's fused softmax and LayerNorm have no backward pass, so the training path spelled
//! both out in elementary ops: softmax as max, subtract, exp, sum, divide; LayerNorm as
//! eight. Each elementary op allocates a tensor of the input's size and records a node that
//! the backward pass walks (and allocates for) again; for attention probabilities that is
//! `[batch, heads, t, t]` per layer. Here each is one candle custom op whose forward runs the
//! inference kernels (`kernels::softmax_rows_inplace`, `kernels::layer_norm_rows_inplace`)
//! and whose backward is one pass over the rows:
//!
//! * softmax: `dx = y * (g - sum(g * y))` per row;
//! * LayerNorm (`y = xhat * w + b`, `xhat = (x - mean) * rstd`):
//!   `dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat))`, `dw = sum over rows of
//!   g * xhat`, `db = sum over rows of g`.
//!
//! They apply to f32 tensors on the CPU when the vector kernels do
//! ([`super::kernels::fast_elementwise`]); elsewhere (CUDA, half precision) the callers keep
//! the composed ops. Tests compare values and gradients with the composed versions.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused ops apply to `x`. `CLINSEARCH_TRAIN_KERNELS=composed` turns them (and
/// the fused optimiser update) off, to measure what they save or to rule them out.
pub fn applies(x: &Tensor) -> bool {
    enabled()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && super::kernels::fast_elementwise()
}

/// False when `CLINSEARCH_TRAIN_KERNELS=composed` (read once).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("CLINSEARCH_TRAIN_KERNELS").map_or(true, |v| v.trim() != "composed")
    })
}

fn rows_of<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: not contiguous"),
        _ => candle_core::bail!("{what}: not f32"),
    }
}

/// Rows per parallel task: about 16k values.
fn rows_per_task(n: usize) -> usize {
    ((1 << 14) / n.max(1)).max(1)
}

/// Softmax over the last dimension, differentiable (`x` f32 on the CPU; see [`applies`]).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// LayerNorm over the last dimension with weight `w` and bias `b`, differentiable in all
/// three.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

/// Mean cross-entropy of `logits` `[rows, classes]` against `targets` (one class per row),
/// differentiable in the logits: one pass for log-softmax and the loss, and a backward of
/// `(softmax - onehot) / rows`. The composed version (`candle_nn::loss::cross_entropy`)
/// allocates six tensors of the logits' size each way, which for masked-language-model
/// logits over a 30,522-token vocabulary are tens of megabytes each.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let (rows, classes) = logits.dims2()?;
    if targets.len() != rows || targets.iter().any(|&t| t as usize >= classes) {
        candle_core::bail!(
            "cross-entropy: {} targets for {rows} rows of {classes} classes",
            targets.len()
        );
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
    })
}

struct CrossEntropy {
    targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().dims().last().copied().unwrap_or(1);
        let z = rows_of(s, l, "logits")?;
        let total: f64 = z
            .par_chunks(n)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                (sum.ln() + max as f64) - row[t as usize] as f64
            })
            .sum();
        let mean = (total / self.targets.len().max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, z: &Tensor, _loss: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (rows, n) = z.dims2()?;
        let scale = g.to_dtype(DType::F32)?.to_scalar::<f32>()? / rows.max(1) as f32;
        let mut dz = z.flatten_all()?.to_vec1::<f32>()?;
        super::kernels::softmax_rows_inplace(&mut dz, n);
        dz.par_chunks_mut(n)
            .zip(self.targets.par_iter())
            .for_each(|(row, &t)| {
                row[t as usize] -= 1.0;
                row.iter_mut().for_each(|v| *v *= scale);
            });
        Ok(Some(Tensor::from_vec(dz, (rows, n), z.device())?))
    }
}

/// GELU (erf form), differentiable: forward and backward by the vector kernels (candle's
/// `gelu_erf` calls scalar `erff` in both).
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut v = rows_of(s, l, "GELU input")?.to_vec();
        super::kernels::gelu_erf_inplace(&mut v);
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut gs = g.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        super::kernels::gelu_erf_grad_inplace(&xs, &mut gs);
        Ok(Some(Tensor::from_vec(gs, x.shape(), x.device())?))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().dims().last().copied().unwrap_or(1);
        let mut v = rows_of(s, l, "softmax input")?.to_vec();
        super::kernels::softmax_rows_inplace(&mut v, n);
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// `(y, g) -> y * (g - sum(g * y))` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().dims().last().copied().unwrap_or(1);
        let y = rows_of(s1, l1, "softmax output")?;
        let g = rows_of(s2, l2, "softmax gradient")?;
        if y.len() != g.len() {
            candle_core::bail!(
                "softmax backward: {} outputs, {} gradients",
                y.len(),
                g.len()
            );
        }
        let mut dx = vec![0f32; y.len()];
        let chunk = rows_per_task(n) * n;
        dx.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(dx, (y, g))| {
                for ((dx, y), g) in dx
                    .chunks_exact_mut(n)
                    .zip(y.chunks_exact(n))
                    .zip(g.chunks_exact(n))
                {
                    let s: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for ((d, y), g) in dx.iter_mut().zip(y).zip(g) {
                        *d = y * (g - s);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().dims().last().copied().unwrap_or(1);
        let (w, b) = (
            rows_of(s2, l2, "LayerNorm weight")?,
            rows_of(s3, l3, "LayerNorm bias")?,
        );
        if w.len() != n || b.len() != n {
            candle_core::bail!(
                "LayerNorm: {n} features, weight {} and bias {}",
                w.len(),
                b.len()
            );
        }
        let mut v = rows_of(s1, l1, "LayerNorm input")?.to_vec();
        super::kernels::layer_norm_rows_inplace(&mut v, n, w, b, self.eps);
        Ok((CpuStorage::F32(v), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let gs = g.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (dx, dw, db) = layer_norm_backward(&xs, &ws, &gs, n, self.eps);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// The three gradients of LayerNorm over rows of `n` (see the module doc), statistics in
/// f64 per row as the forward's are accurate to f32.
fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    n: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let chunk = rows_per_task(n) * n;
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .map(|(dx, (x, g))| {
            let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
            let mut xhat = vec![0f32; n];
            for ((dx, x), g) in dx
                .chunks_exact_mut(n)
                .zip(x.chunks_exact(n))
                .zip(g.chunks_exact(n))
            {
                let mean = x.iter().sum::<f32>() / n as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mut sum_gw, mut sum_gwx) = (0f32, 0f32);
                for i in 0..n {
                    xhat[i] = (x[i] - mean) * rstd;
                    let gw = g[i] * w[i];
                    sum_gw += gw;
                    sum_gwx += gw * xhat[i];
                    dw[i] += g[i] * xhat[i];
                    db[i] += g[i];
                }
                let (m1, m2) = (sum_gw / n as f32, sum_gwx / n as f32);
                for i in 0..n {
                    dx[i] = rstd * (g[i] * w[i] - m1 - xhat[i] * m2);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
    for (pw, pb) in partial {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    fn input(shape: (usize, usize, usize), seed: u64) -> Var {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n).map(|_| rng.f32() * 6.0 - 3.0).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and gradients of the fused softmax equal the composed one's, on a ragged row
    /// length and with a masked (very negative) entry, under a loss that weights each output.
    #[test]
    fn fused_softmax_matches_the_composed_one_forward_and_backward() {
        if !applies(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()) {
            return;
        }
        let x = input((3, 5, 37), 1);
        let masked = x
            .as_tensor()
            .broadcast_add(
                &Tensor::from_vec(
                    (0..37)
                        .map(|i| if i == 36 { -3.0e38f32 } else { 0.0 })
                        .collect::<Vec<_>>(),
                    37,
                    &Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap();
        let weights = input((3, 5, 37), 2);
        let loss = |y: Tensor| (y * weights.as_tensor()).unwrap().sum_all().unwrap();
        let fused = softmax_last_dim(&masked).unwrap();
        let composed = candle_nn::ops::softmax(&masked, D::Minus1).unwrap();
        close(&fused, &composed, 1e-6, "softmax");
        let gf = loss(fused).backward().unwrap();
        let gc = loss(composed).backward().unwrap();
        close(
            gf.get(x.as_tensor()).unwrap(),
            gc.get(x.as_tensor()).unwrap(),
            1e-5,
            "d softmax / dx",
        );
    }

    /// GELU: the same values and gradients as candle's `gelu_erf` (to the erf
    /// approximation's 1.5e-7), across the range where the derivative changes.
    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() {
        if !applies(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()) {
            return;
        }
        let x = input((2, 3, 101), 6);
        let weights = input((2, 3, 101), 7);
        let loss = |y: Tensor| (y * weights.as_tensor()).unwrap().sum_all().unwrap();
        let fused = gelu_erf(x.as_tensor()).unwrap();
        let composed = x.as_tensor().gelu_erf().unwrap();
        close(&fused, &composed, 1e-6, "GELU");
        let (gf, gc) = (
            loss(fused).backward().unwrap(),
            loss(composed).backward().unwrap(),
        );
        close(
            gf.get(x.as_tensor()).unwrap(),
            gc.get(x.as_tensor()).unwrap(),
            1e-5,
            "d GELU / dx",
        );
    }

    /// Cross-entropy: the same loss and logit gradients as candle-nn's.
    #[test]
    fn fused_cross_entropy_matches_candle_nn() {
        if !applies(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()) {
            return;
        }
        let z = Var::from_vec(
            {
                let mut rng = fastrand::Rng::with_seed(5);
                (0..6 * 53).map(|_| rng.f32() * 20.0 - 10.0).collect()
            },
            (6, 53),
            &Device::Cpu,
        )
        .unwrap();
        let targets = [0u32, 52, 7, 7, 30, 1];
        let t = Tensor::from_vec(targets.to_vec(), 6, &Device::Cpu).unwrap();
        let fused = (cross_entropy(z.as_tensor(), &targets).unwrap() * 3.0).unwrap();
        let composed = (candle_nn::loss::cross_entropy(z.as_tensor(), &t).unwrap() * 3.0).unwrap();
        close(&fused, &composed, 1e-6, "loss");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        close(
            gf.get(z.as_tensor()).unwrap(),
            gc.get(z.as_tensor()).unwrap(),
            1e-6,
            "d loss / dz",
        );
        assert!(cross_entropy(z.as_tensor(), &[0, 1]).is_err());
        assert!(cross_entropy(z.as_tensor(), &[0, 1, 2, 3, 4, 53]).is_err());
    }

    /// LayerNorm: the same values and the same gradients for input, weight and bias.
    #[test]
    fn fused_layer_norm_matches_the_composed_one_forward_and_backward() {
        if !applies(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()) {
            return;
        }
        let n = 45;
        let x = input((4, 7, n), 3);
        let w = Var::from_vec(
            (0..n).map(|i| 0.5 + i as f32 / n as f32).collect(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        let b = Var::from_vec((0..n).map(|i| (i as f32).sin()).collect(), n, &Device::Cpu).unwrap();
        let weights = input((4, 7, n), 4);
        let loss = |y: Tensor| (y * weights.as_tensor()).unwrap().sum_all().unwrap();
        let eps = 1e-12f32;
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps).unwrap();
        let composed = {
            let x = x.as_tensor();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + eps as f64).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        close(&fused, &composed, 1e-5, "LayerNorm");
        let gf = loss(fused).backward().unwrap();
        let gc = loss(composed).backward().unwrap();
        for (v, what) in [(&x, "dx"), (&w, "dw"), (&b, "db")] {
            close(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
                1e-4,
                what,
            );
        }
    }
}
