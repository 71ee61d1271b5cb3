//! Prints what the shipped abbreviation dictionary expands in each argument (no collection:
//! senses by frequency only): `cargo run --example probe_abbrev -- "SOB" "s/p CABG"`.

fn main() {
    let d = clinsearch::clinical::abbrev::Dictionary::builtin();
    for q in std::env::args().skip(1) {
        println!("{q}: {:?}", d.expand(&q, None));
    }
}
