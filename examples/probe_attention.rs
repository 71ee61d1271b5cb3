//! GFLOP/s of the attention kernel on the encoder's shape (MiniLM: 12 heads of 32) for a
//! batch of 32 sequences of T tokens (default 256; 10% of keys padded in every other
//! sequence), fused query/key/value rows as the layer passes them. Medians of 7.
use clinsearch::model::kernels::attention_strided;
use std::time::Instant;

fn main() {
    let t: usize = std::env::var("T")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let (b, heads, hd) = (32, 12, 32);
    let h = heads * hd;
    let ld = 3 * h;
    let mut rng = fastrand::Rng::with_seed(1);
    let qkv: Vec<f32> = (0..b * t * ld).map(|_| rng.f32() * 4.0 - 2.0).collect();
    let mask: Vec<f32> = (0..b * t)
        .map(|i| {
            if (i / t) % 2 == 1 && i % t >= t * 9 / 10 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let keys: usize = (0..b)
        .map(|s| {
            mask[s * t..(s + 1) * t]
                .iter()
                .filter(|m| **m != 0.0)
                .count()
        })
        .sum();
    // Scores and context: 2 x 2 x t x keys x hd per head.
    let flops = (4 * t * keys * hd * heads) as f64;
    let run = || {
        std::hint::black_box(attention_strided(
            &qkv,
            &qkv[h..],
            &qkv[2 * h..],
            ld,
            &mask,
            b,
            t,
            heads,
            hd,
        ));
    };
    run();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            run();
            s.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let s = times[3];
    println!(
        "attention b={b} t={t} heads={heads} hd={hd}: {:.1} GFLOP/s ({:.2} ms)",
        flops / s / 1e9,
        s * 1e3
    );
}
