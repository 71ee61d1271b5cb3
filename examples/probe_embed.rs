use clinsearch::model::{Encoder, EncoderOptions};
use std::time::Instant;
fn main() {
    clinsearch::model::tune_allocator();
    let enc = Encoder::load("models/all-MiniLM-L6-v2", &EncoderOptions::default()).unwrap();
    let q = "heart attack treated with a stent";
    let _ = enc.embed(&[q]).unwrap();
    let t = Instant::now();
    let n = 200;
    for _ in 0..n {
        let _ = enc.embed(&[q]).unwrap();
    }
    eprintln!("embed mean {:?}", t.elapsed() / n);
}
