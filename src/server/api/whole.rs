//! Whole numbers in JSON bodies read as JSON Schema reads them: `5` and `5.0` are the same
//! integer (the description says `integer`), where serde alone refuses `5.0`. For
//! `#[serde(deserialize_with = ...)]` on the bodies' integer fields.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Whole(u64),
    Negative(i64),
    Float(f64),
}

fn to_whole<T: TryFrom<u64>, E: serde::de::Error>(n: Number) -> Result<T, E> {
    let v = match n {
        Number::Whole(v) => v,
        Number::Negative(v) => return Err(E::custom(format!("{v}: must be 0 or more"))),
        Number::Float(x) if x.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&x) => x as u64,
        Number::Float(x) => return Err(E::custom(format!("{x} is not a whole number"))),
    };
    T::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
}

pub fn int<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    to_whole(Number::deserialize(d).map_err(|_| D::Error::custom("expected a whole number"))?)
}

pub fn opt_int<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<Number>::deserialize(d)
        .map_err(|_| D::Error::custom("expected a whole number or null"))?
    {
        Some(n) => to_whole(n).map(Some),
        None => Ok(None),
    }
}

/// A field that may be absent (`#[serde(default)]` gives None) but not null.
pub fn present_int<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    int(d).map(Some)
}

pub fn opt_vec_int<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    match Option::<Vec<Number>>::deserialize(d)
        .map_err(|_| D::Error::custom("expected an array of whole numbers or null"))?
    {
        Some(ns) => ns
            .into_iter()
            .map(to_whole)
            .collect::<Result<_, _>>()
            .map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct B {
        #[serde(deserialize_with = "int")]
        n: usize,
        #[serde(default, deserialize_with = "opt_int")]
        m: Option<u32>,
    }

    #[test]
    fn five_and_five_point_zero_are_the_same_and_fractions_are_refused() {
        let b: B = serde_json::from_str(r#"{"n": 5.0, "m": 7}"#).unwrap();
        assert_eq!((b.n, b.m), (5, Some(7)));
        let b: B = serde_json::from_str(r#"{"n": 5}"#).unwrap();
        assert_eq!((b.n, b.m), (5, None));
        for bad in [
            r#"{"n": 5.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": "5"}"#,
            r#"{"n": 1, "m": 1e12}"#,
        ] {
            assert!(serde_json::from_str::<B>(bad).is_err(), "{bad}");
        }
    }
}
