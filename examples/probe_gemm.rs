//! GFLOP/s of the packed f32 dense kernel (and the int8 one) on the encoder's layer shapes
//! for a batch of 32 windows of 139 tokens (for tuning the kernels; medians of 7).
use clinsearch::model::kernels::{linear_packed, PackedWeights};
use clinsearch::model::quant::{linear_i8, PackedI8};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let m: usize = std::env::var("M")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32 * 139);
    let mut rng = fastrand::Rng::with_seed(1);
    for (k, n, what) in [
        (384, 1152, "qkv"),
        (384, 384, "attn out"),
        (384, 1536, "ffn up"),
        (1536, 384, "ffn down"),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32() - 0.5).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.f32() - 0.5).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let pw = PackedWeights::pack(&w, n, k);
        let qw = PackedI8::pack(&w, n, k);
        let flops = 2.0 * (m * n * k) as f64;
        let time = |f: &dyn Fn()| {
            f();
            median(
                (0..7)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let f32_s = time(&|| {
            std::hint::black_box(linear_packed(&x, m, &pw, Some(&b)));
        });
        let i8_s = time(&|| {
            std::hint::black_box(linear_i8(&x, m, &qw, Some(&b)));
        });
        println!(
            "{what:>9} m={m} k={k:>4} n={n:>4}: f32 {:6.1} GFLOP/s ({:.2} ms)  int8 {:6.1} GOP/s ({:.2} ms)",
            flops / f32_s / 1e9,
            f32_s * 1e3,
            flops / i8_s / 1e9,
            i8_s * 1e3
        );
    }
}
