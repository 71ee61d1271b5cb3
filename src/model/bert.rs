//! The BERT encoder and its masked-language-model head, written on candle's tensor ops.
//!
//! Why our own module rather than `candle_transformers::models::bert`: that model returns
//! only the last hidden state, expects an explicit (untied) MLM decoder, and uses candle's
//! fused LayerNorm, which has no backward pass (fine-tuning must reach every layer). Weight
//! names are the normalised ones of [`super::weights`]. The stock model is still used as a
//! reference in tests and benchmarks.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use super::config::{Activation, BertConfig};
use super::weights::Weights;
use crate::error::Result;

/// A dense layer `x W^T + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The weight packed for our AVX-512 kernel (CPU, f32, AVX-512 present), with the bias
    /// as a plain vector: inference takes [`super::kernels::linear_packed`] instead of the GEMM.
    packed: Option<std::sync::Arc<(super::kernels::PackedWeights, Option<Vec<f32>>)>>,
    /// The weight in int8 for [`super::quant::linear_i8`] (`--dtype int8`), with the bias.
    int8: Option<std::sync::Arc<(super::quant::PackedI8, Option<Vec<f32>>)>>,
}

impl Linear {
    /// A layer from tensors in memory (a freshly initialised head), without a packed copy.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            packed: None,
            int8: None,
        }
    }

    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim], dt, dev)?;
        let bias = w.get(&format!("{prefix}.bias"), &[out_dim], dt, dev)?;
        let packed = if dev.is_cpu() && dt == DType::F32 && super::kernels::has_avx512() {
            let flat = weight.flatten_all()?.to_vec1::<f32>()?;
            let packed = super::kernels::PackedWeights::pack(&flat, out_dim, in_dim);
            Some(std::sync::Arc::new((packed, Some(bias.to_vec1::<f32>()?))))
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias: Some(bias),
            packed,
            int8: None,
        })
    }

    /// Several layers over the same input as one (outputs side by side), packed for our
    /// AVX-512 kernel.
    fn fused(parts: &[&Linear]) -> Result<Linear> {
        let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0)?;
        let bias = parts
            .iter()
            .map(|l| l.bias.clone())
            .collect::<Option<Vec<_>>>()
            .map(|b| Tensor::cat(&b, 0))
            .transpose()?;
        let (n, k) = weight.dims2()?;
        let flat = weight.flatten_all()?.to_vec1::<f32>()?;
        let packed = super::kernels::PackedWeights::pack(&flat, n, k);
        let bias_vec = bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok(Linear {
            weight,
            bias,
            packed: Some(std::sync::Arc::new((packed, bias_vec))),
            int8: None,
        })
    }

    /// Quantises the weight for the int8 kernel and drops the f32 packed copy. `act` is the
    /// expected magnitude of each input feature when it can be told from the weights (see
    /// [`BertModel::quantize_int8`]): the smoothing then moves the range of large input
    /// features into the weights (SmoothQuant's migration, strength 0.3, without calibration
    /// data).
    fn quantize_int8(&mut self, act: Option<&[f32]>) -> candle_core::Result<()> {
        let (n, k) = self.weight.dims2()?;
        let flat = self.weight.flatten_all()?.to_vec1::<f32>()?;
        let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
        let smooth = act.map(|act| {
            const ALPHA: f32 = 0.3;
            (0..k)
                .map(|j| {
                    let wmax = (0..n).fold(0f32, |m, i| m.max(flat[i * k + j].abs()));
                    if act[j] > 0.0 && wmax > 0.0 {
                        act[j].powf(ALPHA) / wmax.powf(1.0 - ALPHA)
                    } else {
                        1.0
                    }
                })
                .collect::<Vec<f32>>()
        });
        self.int8 = Some(std::sync::Arc::new((
            super::quant::PackedI8::pack_smoothed(&flat, n, k, smooth.as_deref()),
            bias,
        )));
        self.packed = None;
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Flatten leading dims so that one large GEMM runs instead of a batched one.
        let dims = x.dims().to_vec();
        let (lead, last) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, last[0]))?;
        let n = self.weight.dim(0)?;
        let packed = self
            .packed
            .as_ref()
            .filter(|_| !x2.track_op() && !self.weight.track_op());
        let int8 = self
            .int8
            .as_ref()
            .filter(|_| !x2.track_op() && x2.dtype() == DType::F32);
        if let Some(q) = int8 {
            let (qw, bias) = &**q;
            let out = with_f32_slice(&x2, |xs| {
                super::quant::linear_i8(xs, rows, qw, bias.as_deref())
            })?;
            let mut out_dims = lead.to_vec();
            out_dims.push(n);
            return Tensor::from_vec(out, out_dims, x2.device());
        }
        let y = match packed {
            // AVX-512 with pre-packed weights: the fastest path for every batch size measured.
            Some(p) => {
                let (pw, bias) = &**p;
                let out = with_f32_slice(&x2, |xs| {
                    super::kernels::linear_packed(xs, rows, pw, bias.as_deref())
                })?;
                Tensor::from_vec(out, (rows, n), x2.device())?
            }
            None => match self.few_rows(&x2, rows, last[0], n)? {
                Some(y) => y,
                None => {
                    let mut y = x2.matmul(&self.weight.t()?)?;
                    if let Some(b) = &self.bias {
                        y = y.broadcast_add(b)?;
                    }
                    y
                }
            },
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(n);
        y.reshape(out_dims)
    }

    /// Whether [`Self::forward_slice`] has a kernel for this layer.
    fn has_kernel(&self) -> bool {
        self.int8.is_some() || self.packed.is_some()
    }

    /// `x` `[rows, in]` through our CPU kernels (int8 when quantised, else packed f32), with
    /// `epi` applied to the outputs; None when neither kernel applies (see `has_kernel`).
    fn forward_slice(
        &self,
        x: &[f32],
        rows: usize,
        epi: super::kernels::Epilogue,
    ) -> Option<Vec<f32>> {
        if let Some(q) = &self.int8 {
            let (qw, bias) = &**q;
            return Some(super::quant::linear_i8_with(
                x,
                rows,
                qw,
                bias.as_deref(),
                epi,
            ));
        }
        let (pw, bias) = &**self.packed.as_ref()?;
        Some(super::kernels::linear_packed_with(
            x,
            rows,
            pw,
            bias.as_deref(),
            epi,
        ))
    }

    /// A few rows (a short query) on the CPU in f32, outside autograd: our dot-product kernel
    /// instead of the GEMM (see [`super::kernels`]). None when the case does not apply.
    fn few_rows(
        &self,
        x2: &Tensor,
        m: usize,
        k: usize,
        n: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        use candle_core::Storage;
        if m > super::kernels::SMALL_ROWS
            || !x2.device().is_cpu()
            || x2.dtype() != DType::F32
            || self.weight.dtype() != DType::F32
            || x2.track_op()
            || self.weight.track_op()
        {
            return Ok(None);
        }
        let xs = x2.flatten_all()?.to_vec1::<f32>()?;
        let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
        let (storage, layout) = self.weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Ok(None);
        };
        if !layout.is_contiguous() {
            return Ok(None);
        }
        let all = cpu.as_slice::<f32>()?;
        let start = layout.start_offset();
        let w = &all[start..start + n * k];
        let out = super::kernels::linear_rows(&xs, m, k, w, n, bias.as_deref());
        drop(storage);
        Ok(Some(Tensor::from_vec(out, (m, n), x2.device())?))
    }
}

/// Runs `f` on the f32 values of a CPU tensor, borrowed from its storage when contiguous
/// (no copy: an FFN activation is 25 MB at batch 32 x 128 tokens), copied otherwise.
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    use candle_core::Storage;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if t.dtype() == DType::F32 {
                let all = cpu.as_slice::<f32>()?;
                return Ok(f(&all[start..end]));
            }
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

/// LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        dim: usize,
        eps: f64,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[dim], dt, dev)?,
            bias: w.get(&format!("{prefix}.bias"), &[dim], dt, dev)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            if super::grad_ops::applies(x) && self.weight.dtype() == DType::F32 {
                return super::grad_ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
            }
            return self.forward_differentiable(x);
        }
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }

    /// LayerNorm spelled out in differentiable ops, for training: candle's fused op has no
    /// backward pass, and through it gradients would stop at the last LayerNorm (only a head
    /// on top would train). Statistics in f32 whatever the model's dtype.
    pub fn forward_differentiable(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Dropout for fine-tuning, drawn from a seeded generator so that a run (and a resumed run)
/// is reproducible; candle's own dropout draws from an unseeded one. Inference passes no
/// `Dropout` and never drops.
pub struct Dropout {
    pub hidden: f32,
    pub attention: f32,
    /// Before a classification head (BertForSequenceClassification's `classifier_dropout`).
    pub classifier: f32,
    rng: std::cell::RefCell<fastrand::Rng>,
}

impl Dropout {
    pub fn new(config: &BertConfig, seed: u64) -> Self {
        Dropout {
            hidden: config.hidden_dropout as f32,
            attention: config.attention_dropout as f32,
            classifier: config.classifier_dropout as f32,
            rng: std::cell::RefCell::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply(&self, x: &Tensor, p: f32) -> candle_core::Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let mut rng = self.rng.borrow_mut();
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.f32() < p { 0.0 } else { keep })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

/// Runs an in-place f32 kernel on a copy of `x` when our CPU kernels apply (f32 on the CPU,
/// outside autograd, a vector unit present); None otherwise.
fn fast_map(x: &Tensor, f: impl FnOnce(&mut [f32])) -> candle_core::Result<Option<Tensor>> {
    if !x.device().is_cpu()
        || x.dtype() != DType::F32
        || x.track_op()
        || !super::kernels::fast_elementwise()
    {
        return Ok(None);
    }
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    f(&mut v);
    Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?))
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() {
        // candle's fused softmax has no backward pass: ours, or the composed one.
        if super::grad_ops::applies(x) {
            return super::grad_ops::softmax_last_dim(x);
        }
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    let n = x.dim(D::Minus1)?;
    match fast_map(x, |v| super::kernels::softmax_rows_inplace(v, n))? {
        Some(y) => Ok(y),
        None => candle_nn::ops::softmax_last_dim(x),
    }
}

pub fn activate(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    if act == Activation::Gelu && x.track_op() && super::grad_ops::applies(x) {
        return super::grad_ops::gelu_erf(x);
    }
    match act {
        Activation::Gelu => match fast_map(x, super::kernels::gelu_erf_inplace)? {
            Some(y) => Ok(y),
            None => x.gelu_erf(),
        },
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
        Activation::Tanh => x.tanh(),
    }
}

#[derive(Debug, Clone)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Layer {
    /// Whether every dense layer has a CPU kernel, so that [`Self::forward_fast`] applies.
    fn fast_ready(&self) -> bool {
        let qkv = match &self.qkv {
            Some(l) => l.has_kernel(),
            None => [&self.query, &self.key, &self.value]
                .iter()
                .all(|l| l.has_kernel()),
        };
        qkv && [&self.attn_out, &self.intermediate, &self.output]
            .iter()
            .all(|l| l.has_kernel())
    }

    /// One layer of CPU inference on plain buffers: the hidden state `x` `[b * t, h]` never
    /// becomes a tensor, the residual adds and BERT's GELU run inside the dense kernels'
    /// output tiles, and the LayerNorms run in place. Before this, each layer made four
    /// tensor round trips (a copy each for GELU and the two residual adds, an allocation for
    /// each LayerNorm).
    #[allow(clippy::too_many_arguments)]
    fn forward_fast(
        &self,
        x: Vec<f32>,
        mask: &[f32],
        b: usize,
        t: usize,
        heads: usize,
        hd: usize,
        act: Activation,
    ) -> candle_core::Result<Vec<f32>> {
        use super::kernels::{attention, attention_strided, layer_norm_rows_inplace, Epilogue};
        let (h, rows) = (heads * hd, b * t);
        let missing = || candle_core::Error::Msg("layer without a CPU kernel".into());
        let ctx = match &self.qkv {
            Some(qkv) => {
                let all = qkv
                    .forward_slice(&x, rows, Epilogue::None)
                    .ok_or_else(missing)?;
                attention_strided(&all, &all[h..], &all[2 * h..], 3 * h, mask, b, t, heads, hd)
            }
            None => {
                let run = |l: &Linear| {
                    l.forward_slice(&x, rows, Epilogue::None)
                        .ok_or_else(missing)
                };
                attention(
                    &run(&self.query)?,
                    &run(&self.key)?,
                    &run(&self.value)?,
                    mask,
                    b,
                    t,
                    heads,
                    hd,
                )
            }
        };
        let mut attn = self
            .attn_out
            .forward_slice(&ctx, rows, Epilogue::Residual(&x))
            .ok_or_else(missing)?;
        drop((x, ctx));
        let norm = |v: &mut Vec<f32>, n: &LayerNorm| -> candle_core::Result<()> {
            let (g, bt) = (n.weight.to_vec1::<f32>()?, n.bias.to_vec1::<f32>()?);
            layer_norm_rows_inplace(v, h, &g, &bt, n.eps as f32);
            Ok(())
        };
        norm(&mut attn, &self.attn_norm)?;
        if let (Some(up), Some(down), Activation::Gelu) =
            (&self.intermediate.int8, &self.output.int8, act)
        {
            // Enough rows for two blocks per thread: the fused int8 feed-forward block.
            if rows >= 2 * super::quant::FFN_ROWS * rayon::current_num_threads() {
                let (g, bt) = (
                    self.out_norm.weight.to_vec1::<f32>()?,
                    self.out_norm.bias.to_vec1::<f32>()?,
                );
                let ln = (&g[..], &bt[..], self.out_norm.eps as f32);
                let (up, down) = (&**up, &**down);
                return Ok(super::quant::ffn_i8(
                    &attn,
                    rows,
                    &up.0,
                    up.1.as_deref(),
                    &down.0,
                    down.1.as_deref(),
                    ln,
                ));
            }
        }
        let inter = match act {
            Activation::Gelu => self.intermediate.forward_slice(&attn, rows, Epilogue::Gelu),
            _ => self.intermediate.forward_slice(&attn, rows, Epilogue::None),
        }
        .ok_or_else(missing)?;
        let inter = if matches!(act, Activation::Gelu) {
            inter
        } else {
            let n = inter.len() / rows;
            activate(act, &Tensor::from_vec(inter, (rows, n), &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1::<f32>()?
        };
        let mut out = self
            .output
            .forward_slice(&inter, rows, Epilogue::Residual(&attn))
            .ok_or_else(missing)?;
        norm(&mut out, &self.out_norm)?;
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    /// Query, key and value as one `[3h, h]` layer for the CPU inference kernels (one pass
    /// over the input, one copy, one quantisation instead of three); None elsewhere.
    qkv: Option<Linear>,
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// The BERT encoder stack (embeddings + transformer layers), without pooler.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pub config: BertConfig,
    pub dtype: DType,
    pub device: Device,
}

impl BertModel {
    pub fn load(w: &Weights, config: &BertConfig, dtype: DType, device: &Device) -> Result<Self> {
        let c = config;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let embeddings = Embeddings {
            word: w.get(
                "embeddings.word_embeddings.weight",
                &[c.vocab_size, h],
                dtype,
                device,
            )?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
                dtype,
                device,
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
                dtype,
                device,
            )?,
            norm: LayerNorm::load(w, "embeddings.LayerNorm", h, eps, dtype, device)?,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: None,
                query: Linear::load(w, &format!("{p}.attention.self.query"), h, h, dtype, device)?,
                key: Linear::load(w, &format!("{p}.attention.self.key"), h, h, dtype, device)?,
                value: Linear::load(w, &format!("{p}.attention.self.value"), h, h, dtype, device)?,
                attn_out: Linear::load(
                    w,
                    &format!("{p}.attention.output.dense"),
                    h,
                    h,
                    dtype,
                    device,
                )?,
                attn_norm: LayerNorm::load(
                    w,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    eps,
                    dtype,
                    device,
                )?,
                intermediate: Linear::load(
                    w,
                    &format!("{p}.intermediate.dense"),
                    c.intermediate_size,
                    h,
                    dtype,
                    device,
                )?,
                output: Linear::load(
                    w,
                    &format!("{p}.output.dense"),
                    h,
                    c.intermediate_size,
                    dtype,
                    device,
                )?,
                out_norm: LayerNorm::load(
                    w,
                    &format!("{p}.output.LayerNorm"),
                    h,
                    eps,
                    dtype,
                    device,
                )?,
            });
        }
        if device.is_cpu() && dtype == DType::F32 && super::kernels::has_avx512() {
            for l in &mut layers {
                l.qkv = Some(Linear::fused(&[&l.query, &l.key, &l.value])?);
            }
        }
        Ok(BertModel {
            embeddings,
            layers,
            config: c.clone(),
            dtype,
            device: device.clone(),
        })
    }

    /// Puts every encoder dense layer on the int8 kernel; false (nothing changed) unless the
    /// model is f32 on a CPU with AVX-512 VNNI. The inputs that come straight from a LayerNorm
    /// (query, key, value, intermediate) are smoothed by its `|gamma| + |beta|`, which predicts
    /// their large features. (Smoothing the attention context by the value projection's
    /// predicted spread changed nothing measurable; the GELU output by the intermediate
    /// projection's made it worse: cosine 0.993.)
    pub fn quantize_int8(&mut self) -> Result<bool> {
        if !(self.device.is_cpu() && self.dtype == DType::F32 && super::quant::has_vnni()) {
            return Ok(false);
        }
        let norm_act = |n: &LayerNorm| -> candle_core::Result<Vec<f32>> {
            let g = n.weight.to_vec1::<f32>()?;
            let b = n.bias.to_vec1::<f32>()?;
            Ok(g.iter().zip(&b).map(|(g, b)| g.abs() + b.abs()).collect())
        };
        let mut prev = norm_act(&self.embeddings.norm)?;
        for l in &mut self.layers {
            let inner = norm_act(&l.attn_norm)?;
            l.query.quantize_int8(Some(&prev))?;
            l.key.quantize_int8(Some(&prev))?;
            l.value.quantize_int8(Some(&prev))?;
            // Separate int8 projections, each smoothed by its own weights: fused, the shared
            // smoothing lowered the cosine to f32 (lowest 0.9987 against 0.9990) for no
            // measurable speed.
            l.qkv = None;
            l.attn_out.quantize_int8(None)?;
            l.intermediate.quantize_int8(Some(&inner))?;
            l.output.quantize_int8(None)?;
            prev = norm_act(&l.out_norm)?;
        }
        Ok(true)
    }

    /// Every parameter's slot under its checkpoint name, with the layer it belongs to (`None`
    /// for the embeddings), in a fixed order: what fine-tuning trains and saves.
    fn slots(&mut self) -> Vec<(String, Option<usize>, &mut Tensor)> {
        let mut out: Vec<(String, Option<usize>, &mut Tensor)> = vec![];
        let e = &mut self.embeddings;
        out.push((
            "embeddings.word_embeddings.weight".into(),
            None,
            &mut e.word,
        ));
        out.push((
            "embeddings.position_embeddings.weight".into(),
            None,
            &mut e.position,
        ));
        out.push((
            "embeddings.token_type_embeddings.weight".into(),
            None,
            &mut e.token_type,
        ));
        out.push((
            "embeddings.LayerNorm.weight".into(),
            None,
            &mut e.norm.weight,
        ));
        out.push(("embeddings.LayerNorm.bias".into(), None, &mut e.norm.bias));
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            let linears: [(&str, &mut Linear); 6] = [
                ("attention.self.query", &mut l.query),
                ("attention.self.key", &mut l.key),
                ("attention.self.value", &mut l.value),
                ("attention.output.dense", &mut l.attn_out),
                ("intermediate.dense", &mut l.intermediate),
                ("output.dense", &mut l.output),
            ];
            for (name, lin) in linears {
                out.push((format!("{p}.{name}.weight"), Some(i), &mut lin.weight));
                if let Some(b) = lin.bias.as_mut() {
                    out.push((format!("{p}.{name}.bias"), Some(i), b));
                }
            }
            for (name, norm) in [
                ("attention.output.LayerNorm", &mut l.attn_norm),
                ("output.LayerNorm", &mut l.out_norm),
            ] {
                out.push((format!("{p}.{name}.weight"), Some(i), &mut norm.weight));
                out.push((format!("{p}.{name}.bias"), Some(i), &mut norm.bias));
            }
        }
        out
    }

    /// All parameters under their checkpoint names (detached copies share storage).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut copy = self.clone();
        copy.slots()
            .into_iter()
            .map(|(n, _, t)| (n, t.detach()))
            .collect()
    }

    /// Turns the parameters of layers `freeze_layers..` (and of the embeddings when
    /// `freeze_layers` is 0) into trainable variables and returns them by name. Frozen layers
    /// stay plain tensors and keep the fast inference kernels.
    pub fn make_trainable(
        &mut self,
        freeze_layers: usize,
    ) -> Result<Vec<(String, candle_core::Var)>> {
        if freeze_layers > self.layers.len() {
            return Err(crate::error::Error::InvalidInput(format!(
                "cannot freeze {freeze_layers} layers: the model has {}",
                self.layers.len()
            )));
        }
        for l in self.layers.iter_mut().skip(freeze_layers) {
            l.qkv = None;
            for lin in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                // The packed copies would go stale as the weights change.
                lin.packed = None;
                lin.int8 = None;
            }
        }
        let mut vars = vec![];
        for (name, layer, slot) in self.slots() {
            let trainable = match layer {
                None => freeze_layers == 0,
                Some(i) => i >= freeze_layers,
            };
            if trainable {
                let var = candle_core::Var::from_tensor(slot)?;
                *slot = var.as_tensor().clone();
                vars.push((name, var));
            }
        }
        Ok(vars)
    }

    /// The word embedding matrix (the MLM decoder is tied to it).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
    }

    /// Last hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` (u32) with
    /// `attention_mask` `[batch, seq]` (1 for tokens, 0 for padding). One text segment.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_with(input_ids, attention_mask, None)
    }

    /// [`Self::forward`] for fine-tuning: dropout where BERT applies it (embeddings, attention
    /// probabilities, each sub-layer's output) when `dropout` is given.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let drop = |x: Tensor, p: fn(&Dropout) -> f32| -> candle_core::Result<Tensor> {
            match dropout {
                Some(d) => d.apply(&x, p(d)),
                None => Ok(x),
            }
        };
        let (b, t) = input_ids.dims2()?;
        let c = &self.config;
        let e = &self.embeddings;
        let words = e
            .word
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        let positions = e.position.i(0..t)?;
        let token_type = e.token_type.i(0)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&token_type)?;
        let mut x = drop(e.norm.forward(&x)?, |d| d.hidden)?;

        // Additive mask: 0 where attended, a very large negative where padded.
        let neg = match self.dtype {
            DType::F16 => -65504.0,
            _ => -3.0e38,
        };
        let mask = attention_mask
            .to_dtype(DType::F32)?
            .affine(-neg, neg)? // mask 1 -> 0, mask 0 -> neg
            .to_dtype(self.dtype)?
            .reshape((b, 1, 1, t))?;
        let heads = c.num_attention_heads;
        let hd = c.head_dim();
        let scale = 1.0 / (hd as f64).sqrt();
        // Our attention kernel for CPU f32 inference (no [b, heads, t, t] tensor, no head
        // split/merge copies); candle's ops otherwise (GPU, other dtypes, training). Short
        // inputs take it too since whole layers run on plain buffers (`Layer::forward_fast`):
        // one 12-token query 5.5-7.5 -> 3.3-4.4 ms against candle's ops for attention and
        // the element-wise steps (examples/probe_embed, alternating runs).
        let fast_attention = self.device.is_cpu()
            && dropout.is_none()
            && self.dtype == DType::F32
            && super::kernels::fast_elementwise();
        let mask_vec: Option<Vec<f32>> = if fast_attention {
            Some(
                attention_mask
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        if let Some(m) = &mask_vec {
            if !x.track_op() && self.layers.iter().all(Layer::fast_ready) {
                let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
                for layer in &self.layers {
                    xs = layer.forward_fast(xs, m, b, t, heads, hd, c.hidden_act)?;
                }
                return Ok(Tensor::from_vec(xs, (b, t, c.hidden_size), &self.device)?);
            }
        }
        for layer in &self.layers {
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let (q, k, v) = (
                layer.query.forward(&x)?,
                layer.key.forward(&x)?,
                layer.value.forward(&x)?,
            );
            let ctx = match &mask_vec {
                Some(m) if !(q.track_op() || k.track_op() || v.track_op()) => {
                    let flat = |y: &Tensor| y.flatten_all()?.to_vec1::<f32>();
                    let out = super::kernels::attention(
                        &flat(&q)?,
                        &flat(&k)?,
                        &flat(&v)?,
                        m,
                        b,
                        t,
                        heads,
                        hd,
                    );
                    Tensor::from_vec(out, (b, t, c.hidden_size), &self.device)?
                }
                _ => {
                    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
                    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
                    let probs = drop(softmax_last_dim(&scores)?, |d| d.attention)?;
                    probs
                        .matmul(&v)?
                        .transpose(1, 2)?
                        .reshape((b, t, c.hidden_size))?
                }
            };
            let attn_out = drop(layer.attn_out.forward(&ctx)?, |d| d.hidden)?;
            let attn = layer.attn_norm.forward(&(attn_out + &x)?)?;
            let inter = activate(c.hidden_act, &layer.intermediate.forward(&attn)?)?;
            let out = drop(layer.output.forward(&inter)?, |d| d.hidden)?;
            x = layer.out_norm.forward(&(out + &attn)?)?;
        }
        Ok(x)
    }
}

/// The BertForMaskedLM head: dense + activation + LayerNorm, then the decoder tied to the
/// word embeddings (unless the checkpoint stores its own) plus a bias.
#[derive(Debug, Clone)]
pub struct MlmHead {
    pub dense: Linear,
    pub norm: LayerNorm,
    /// `[vocab, hidden]`: the word embeddings themselves when tied (training then updates
    /// both through one variable).
    pub decoder: Tensor,
    pub bias: Tensor,
    pub act: Activation,
}

/// The tensors that reveal an MLM head in a checkpoint.
pub const MLM_HEAD_KEY: &str = "cls.predictions.transform.dense.weight";

impl MlmHead {
    /// Loads the head; `Ok(None)` when the checkpoint has none (sentence-transformers models).
    pub fn load(w: &Weights, model: &BertModel) -> Result<Option<Self>> {
        if !w.contains(MLM_HEAD_KEY) {
            return Ok(None);
        }
        let c = &model.config;
        let (h, dt, dev) = (c.hidden_size, model.dtype, &model.device);
        let decoder = if w.contains("cls.predictions.decoder.weight") {
            w.get(
                "cls.predictions.decoder.weight",
                &[c.vocab_size, h],
                dt,
                dev,
            )?
        } else {
            model.word_embeddings().clone()
        };
        let bias_key = if w.contains("cls.predictions.bias") {
            "cls.predictions.bias"
        } else {
            "cls.predictions.decoder.bias"
        };
        Ok(Some(MlmHead {
            dense: Linear::load(w, "cls.predictions.transform.dense", h, h, dt, dev)?,
            norm: LayerNorm::load(
                w,
                "cls.predictions.transform.LayerNorm",
                h,
                c.layer_norm_eps,
                dt,
                dev,
            )?,
            decoder,
            bias: w.get(bias_key, &[c.vocab_size], dt, dev)?,
            act: c.hidden_act,
        }))
    }

    /// Vocabulary logits `[n, vocab]` for hidden states `[n, hidden]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = activate(self.act, &self.dense.forward(hidden)?)?;
        let x = self.norm.forward(&x)?;
        Ok(x.matmul(&self.decoder.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Row-wise L2 normalisation of `[n, d]`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}
