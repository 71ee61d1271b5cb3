//! The encoder layer against golden outputs computed by PyTorch transformers and
//! sentence-transformers (tests/fixtures/make_fixtures.py).

use clinsearch::model::{ContextText, EncoderOptions, Pooling, WindowConfig, WindowContext};
use clinsearch::Error;

use crate::common::*;

fn opts(pooling: Pooling) -> EncoderOptions {
    EncoderOptions {
        pooling: Some(pooling),
        ..Default::default()
    }
}

fn check_against_transformers(model_dir: &str, golden_name: &str) {
    check_against_transformers_on(model_dir, golden_name, &candle_core::Device::Cpu, 1e-4);
}

/// Hidden states, pooled embeddings (mean and CLS) and MLM top-5 of a fixture computed on
/// `device` agree with transformers to `tol`.
pub(crate) fn check_against_transformers_on(
    model_dir: &str,
    golden_name: &str,
    device: &candle_core::Device,
    tol: f32,
) {
    let dir = fixture(model_dir);
    let g = golden(golden_name);
    let on = |pooling| EncoderOptions {
        device: device.clone(),
        ..opts(pooling)
    };
    let mean = load(&dir, on(Pooling::Mean));
    let cls = load(&dir, on(Pooling::Cls));
    for case in g["embeddings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let (ids, hidden) = mean.hidden_states(text).unwrap();
        assert_eq!(ids, ints(&case["input_ids"]), "token ids of {text:?}");
        let hidden: Vec<f32> = hidden
            .flatten_all()
            .unwrap()
            .to_device(&candle_core::Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = max_abs_diff(&hidden, &floats(&case["last_hidden_state"]));
        assert!(
            d < tol,
            "{model_dir}: hidden states of {text:?} differ by {d}"
        );
        let m = &mean.embed(&[text]).unwrap()[0];
        let d = max_abs_diff(m, &floats(&case["mean"]));
        assert!(
            d < tol,
            "{model_dir}: mean embedding of {text:?} differs by {d}"
        );
        let c = &cls.embed(&[text]).unwrap()[0];
        let d = max_abs_diff(c, &floats(&case["cls"]));
        assert!(
            d < tol,
            "{model_dir}: CLS embedding of {text:?} differs by {d}"
        );
    }
    for case in g["mlm"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let preds = mean.fill_mask(text, 5).unwrap();
        let masks = case["masks"].as_array().unwrap();
        assert_eq!(
            preds.len(),
            masks.len(),
            "one prediction per [MASK] in {text:?}"
        );
        for (p, want) in preds.iter().zip(masks) {
            assert_eq!(p.position as u64, want["position"].as_u64().unwrap());
            let ids: Vec<u32> = p.candidates.iter().map(|c| c.id).collect();
            assert_eq!(ids, ints(&want["ids"]), "top-5 ids for {text:?}");
            let probs: Vec<f32> = p.candidates.iter().map(|c| c.score).collect();
            let d = max_abs_diff(&probs, &floats(&want["probs"]));
            assert!(d < tol, "top-5 probabilities for {text:?} differ by {d}");
        }
    }
}

#[test]
fn safetensors_bert_prefixed_with_tokenizer_json_matches_transformers() {
    check_against_transformers("tiny-mlm-uncased", "tiny-mlm-uncased.json");
}

#[test]
fn legacy_pickle_checkpoint_with_gamma_beta_and_vocab_only_matches_transformers() {
    check_against_transformers("tiny-mlm-cased-legacy", "tiny-mlm-cased.json");
}

#[test]
fn zip_pytorch_checkpoint_with_untied_decoder_omitted_matches_transformers() {
    check_against_transformers("tiny-mlm-cased-zip", "tiny-mlm-cased.json");
}

#[test]
fn cased_vocabulary_without_config_is_not_lowercased() {
    let enc = load(&fixture("tiny-mlm-cased-legacy"), EncoderOptions::default());
    assert!(!enc.info().lowercase);
    let a = enc.tokenizer().encode("Patient").unwrap().ids;
    let b = enc.tokenizer().encode("patient").unwrap().ids;
    assert_ne!(a, b, "a cased vocabulary must keep case apart");
}

#[test]
fn sharded_sentence_transformers_folder_matches_sentence_transformers() {
    let g = golden("tiny-st-sharded.json");
    // Defaults come from the folder: CLS pooling (1_Pooling), 24-token limit, normalised.
    let enc = load(&fixture("tiny-st-sharded"), EncoderOptions::default());
    assert_eq!(enc.info().pooling, Pooling::Cls);
    assert_eq!(enc.info().window_size, 24);
    let cases = g["embeddings"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = enc.embed(&texts).unwrap();
    for (case, v) in cases.iter().zip(&got) {
        let want = floats(&case["embedding"]);
        let d = max_abs_diff(v, &want);
        assert!(
            d < 1e-4,
            "{:?}: differs from sentence-transformers by {d}",
            case["text"]
        );
    }
}

/// `--dtype int8` (int8 dense layers on AVX-512 VNNI) stays within cosine 0.999 of
/// sentence-transformers' f32 embeddings (measured on 64 MTSamples notes: median 0.9996,
/// lowest 0.9994, with per-group weight scales; 0.9988 with one scale per output feature);
/// without VNNI it runs in f32 and says so.
#[test]
fn int8_embeddings_stay_close_to_f32() {
    let dir = default_model();
    let g = golden("minilm.json");
    let enc = load(
        &dir,
        EncoderOptions {
            int8: true,
            ..Default::default()
        },
    );
    if !clinsearch::model::quant::has_vnni() {
        assert_eq!(enc.info().dtype, "f32");
        eprintln!("SKIPPED: no AVX-512 VNNI here; int8 falls back to f32");
        return;
    }
    assert_eq!(enc.info().dtype, "int8");
    let cases = g["embeddings"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = enc.embed(&texts).unwrap();
    for (case, v) in cases.iter().zip(&got) {
        let c = cosine(v, &floats(&case["embedding"]));
        assert!(c >= 0.999, "int8 cosine {c} for {:?}", case["text"]);
    }
    // Windows of a long note too.
    let note = "Patient admitted with community acquired pneumonia, started on ceftriaxone and azithromycin. ".repeat(40);
    let f32_enc = load(&dir, EncoderOptions::default());
    let a = enc.embed_windows(&[&note]).unwrap().remove(0);
    let b = f32_enc.embed_windows(&[&note]).unwrap().remove(0);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let c = cosine(&x.vector, &y.vector);
        assert!(c >= 0.999, "window {}: cosine {c}", x.index);
    }
}

#[test]
fn default_model_matches_sentence_transformers_on_clinical_sentences() {
    let dir = default_model();
    let g = golden("minilm.json");
    let enc = load(&dir, EncoderOptions::default());
    assert_eq!(enc.dim(), 384);
    assert_eq!(
        enc.info().window_size,
        g["max_seq_length"].as_u64().unwrap() as usize
    );
    let cases = g["embeddings"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = enc.embed(&texts).unwrap();
    for (case, v) in cases.iter().zip(&got) {
        let c = cosine(v, &floats(&case["embedding"]));
        assert!(
            c >= 0.9999,
            "cosine {c} to sentence-transformers for {:?}",
            case["text"]
        );
    }
}

#[test]
fn batching_with_padding_gives_the_same_vectors_as_one_at_a_time() {
    let enc = load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            batch_size: 3,
            ..Default::default()
        },
    );
    let texts = [
        "chest pain",
        "History of CHF, s/p MI in 2019; on metoprolol 25 mg BID.",
        "fever",
        "CT abdomen: no evidence of acute appendicitis.",
        "denies sob",
    ];
    let batched = enc.embed(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batched) {
        let single = &enc.embed(&[t]).unwrap()[0];
        assert!(
            max_abs_diff(single, b) < 1e-5,
            "{t:?} changes when batched with others"
        );
    }
}

#[test]
fn long_notes_are_split_into_overlapping_windows_that_map_back_to_the_text() {
    let enc = load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            window: WindowConfig {
                size: Some(16),
                stride: Some(4),
                max_windows: None,
                context: None,
            },
            ..Default::default()
        },
    );
    let note = "Patient denies chest pain. History of CHF, s/p MI in 2019; on metoprolol 25 mg BID. \
                CT abdomen: no evidence of acute appendicitis. Started on lisinopril for hypertension, \
                follow up in 2 weeks. Héllo naïve café.";
    let windows = &enc.embed_windows(&[note]).unwrap()[0];
    assert!(windows.len() >= 4, "{} windows", windows.len());
    assert_eq!(windows[0].start, 0);
    assert_eq!(
        windows.last().unwrap().end,
        note.len(),
        "the last window reaches the end"
    );
    for pair in windows.windows(2) {
        assert!(pair[1].start < pair[0].end, "consecutive windows overlap");
        assert!(pair[1].start > pair[0].start);
    }
    for w in windows {
        assert!(w.tokens <= 14);
        let slice = &note[w.start..w.end];
        let by_chars: String = note
            .chars()
            .skip(w.char_start)
            .take(w.char_end - w.char_start)
            .collect();
        assert_eq!(slice, by_chars, "byte and character spans agree");
        // A window's vector is the embedding of its own text.
        let alone = &enc.embed(&[slice]).unwrap()[0];
        assert!(
            cosine(alone, &w.vector) > 0.9999,
            "window {} vector",
            w.index
        );
    }
}

fn windowed(context: WindowContext) -> clinsearch::model::Encoder {
    load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            window: WindowConfig {
                size: Some(32),
                stride: Some(4),
                max_windows: None,
                context: Some(context),
            },
            ..Default::default()
        },
    )
}

/// Words of the tiny model's vocabulary only, so every token is a whole word and a window's
/// text slice tokenizes exactly as the window's tokens.
const SECTIONED: &str =
    "HISTORY: patient denies chest pain with shortness of breath and cough for \
    weeks with fever and asthma and copd and chf and diabetes and hypertension. PHYSICAL EXAM: \
    lungs with pneumonia and heart with atrial fibrillation and abdomen normal and liver normal \
    and kidney normal with left lung mass and right lung lesion and acute renal failure and \
    abnormal ecg and abnormal echo and abnormal xray and abnormal mri with malignant tumor.";

fn headings_of(text: &str) -> Vec<(usize, String)> {
    clinsearch::clinical::sections::headings(text)
        .iter()
        .map(|h| (h.start, h.label(text)))
        .collect()
}

#[test]
fn with_title_context_every_window_is_read_under_the_notes_title() {
    let enc = windowed(WindowContext::Title);
    let title = "consult";
    let doc = ContextText {
        title: Some(title),
        text: SECTIONED,
        headings: &[],
    };
    let windows = &enc.embed_windows_in_context(&[doc]).unwrap()[0];
    assert!(windows.len() >= 3, "{} windows", windows.len());
    assert_eq!(windows[0].start, 0);
    assert_eq!(windows.last().unwrap().end, SECTIONED.len());
    for pair in windows.windows(2) {
        assert!(pair[1].start < pair[0].end, "consecutive windows overlap");
    }
    for w in windows {
        // The title (1 token) and the window's text fit the 30 positions between the
        // specials, and the vector is that of "title + the window's text".
        assert!(w.tokens < 30, "window {} has {} tokens", w.index, w.tokens);
        let read = format!("{title}\n{}", &SECTIONED[w.start..w.end]);
        let alone = &enc.embed(&[&read]).unwrap()[0];
        assert!(cosine(alone, &w.vector) > 0.9999, "window {}", w.index);
    }
    assert_eq!(
        enc.count_windows_in_context(&[doc]).unwrap(),
        windows.len(),
        "counting agrees with embedding"
    );
}

#[test]
fn with_heading_context_a_window_inside_a_section_carries_its_heading() {
    let enc = windowed(WindowContext::Heading);
    let headings = headings_of(SECTIONED);
    assert_eq!(headings.len(), 2, "{headings:?}");
    let exam = headings[1].0;
    let doc = ContextText {
        title: Some("consult"),
        text: SECTIONED,
        headings: &headings,
    };
    let windows = &enc.embed_windows_in_context(&[doc]).unwrap()[0];
    let mut inside_exam = 0;
    for w in windows {
        let in_force = headings.iter().rev().find(|(at, _)| *at < w.start);
        let read = match (w.index, in_force) {
            (0, _) | (_, None) => format!("consult\n{}", &SECTIONED[w.start..w.end]),
            (_, Some((at, label))) => {
                inside_exam += usize::from(*at == exam);
                format!("consult {label} {}", &SECTIONED[w.start..w.end])
            }
        };
        let alone = &enc.embed(&[&read]).unwrap()[0];
        assert!(
            cosine(alone, &w.vector) > 0.9999,
            "window {}: {read:?}",
            w.index
        );
    }
    assert!(
        inside_exam >= 2,
        "windows inside the exam section: {inside_exam}"
    );
    assert_eq!(enc.count_windows_in_context(&[doc]).unwrap(), windows.len());
}

#[test]
fn without_context_a_note_is_embedded_as_title_then_text() {
    let enc = windowed(WindowContext::None);
    let doc = ContextText {
        title: Some("cardiology consult"),
        text: SECTIONED,
        headings: &[],
    };
    let got = &enc.embed_windows_in_context(&[doc]).unwrap()[0];
    let joined = format!("cardiology consult\n{SECTIONED}");
    let want = &enc.embed_windows(&[&joined]).unwrap()[0];
    assert_eq!(got.len(), want.len());
    let shift = "cardiology consult\n".len();
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.vector, w.vector);
        assert_eq!(g.end, w.end - shift, "spans point into the text");
    }
    // A note shorter than one window is the same whatever the context.
    let short = ContextText {
        title: Some("consult"),
        text: "no chest pain",
        headings: &[],
    };
    let a = &enc.embed_windows_in_context(&[short]).unwrap()[0];
    let b = &windowed(WindowContext::Heading)
        .embed_windows_in_context(&[short])
        .unwrap()[0];
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].vector, b[0].vector);
}

#[test]
fn fifty_thousand_word_note_is_windowed_or_truncated_without_panic() {
    let enc = load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            window: WindowConfig {
                size: None,
                stride: None,
                max_windows: Some(8),
                context: None,
            },
            ..Default::default()
        },
    );
    let note = "patient denies chest pain ".repeat(12_500);
    let v = enc.embed(&[&note]).unwrap();
    assert_eq!(v[0].len(), 32);
    let windows = &enc.embed_windows(&[&note]).unwrap()[0];
    assert_eq!(windows.len(), 8, "the window cap holds");
    // The model's 64 positions are respected.
    assert!(windows.iter().all(|w| w.tokens + 2 <= 64));
}

#[test]
fn empty_text_is_a_clear_error() {
    let enc = load(&fixture("tiny-mlm-uncased"), EncoderOptions::default());
    for bad in ["", "   \n\t"] {
        match enc.embed(&["fine", bad]) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("text 2"), "{m}"),
            other => panic!("expected InvalidInput, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(
            enc.embed_windows(&[bad]),
            Err(Error::InvalidInput(_))
        ));
    }
}

#[test]
fn fill_mask_errors_are_clear() {
    let mlm = load(&fixture("tiny-mlm-uncased"), EncoderOptions::default());
    assert!(matches!(
        mlm.fill_mask("no mask here", 5),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        mlm.fill_mask("[MASK]", 0),
        Err(Error::InvalidInput(_))
    ));
    let too_long = format!("{} [MASK]", "pain ".repeat(100));
    assert!(matches!(
        mlm.fill_mask(&too_long, 5),
        Err(Error::InvalidInput(_))
    ));
    let st = load(&fixture("tiny-st-sharded"), EncoderOptions::default());
    match st.fill_mask("chest [MASK]", 5) {
        Err(e @ Error::MissingWeights { .. }) => assert!(e.to_string().contains("cls.predictions")),
        other => panic!("expected MissingWeights, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn several_masks_each_get_ranked_candidates_with_probabilities() {
    let enc = load(&fixture("tiny-mlm-cased-zip"), EncoderOptions::default());
    let preds = enc
        .fill_mask("Denies [MASK] pain and [MASK] of [MASK].", 7)
        .unwrap();
    assert_eq!(preds.len(), 3);
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p.mask_index, i);
        assert_eq!(p.candidates.len(), 7);
        assert!(p.candidates.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(p
            .candidates
            .iter()
            .all(|c| c.score > 0.0 && c.score < 1.0 && !c.token.is_empty()));
    }
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    tmp
}

#[test]
fn invalid_model_path_is_a_clear_error() {
    let err = clinsearch::model::Encoder::load("./no/such/model", &EncoderOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::ModelNotFound(_)), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = clinsearch::model::Encoder::load(
        empty.path().to_str().unwrap(),
        &EncoderOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn corrupt_safetensors_is_a_clear_error() {
    let tmp = copy_fixture("tiny-mlm-uncased");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let err =
        clinsearch::model::Encoder::load(tmp.path().to_str().unwrap(), &EncoderOptions::default())
            .err()
            .unwrap();
    assert!(matches!(err, Error::BadModelFile { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn truncated_legacy_checkpoint_is_a_clear_error() {
    let tmp = copy_fixture("tiny-mlm-cased-legacy");
    let path = tmp.path().join("pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 500, bytes.len() - 100] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = clinsearch::model::Encoder::load(
            tmp.path().to_str().unwrap(),
            &EncoderOptions::default(),
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, Error::BadModelFile { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn unknown_activation_in_config_is_a_clear_error() {
    let tmp = copy_fixture("tiny-mlm-uncased");
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"gelu\"", "\"quantum_gelu\"");
    std::fs::write(&path, text).unwrap();
    let err =
        clinsearch::model::Encoder::load(tmp.path().to_str().unwrap(), &EncoderOptions::default())
            .err()
            .unwrap();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("quantum_gelu"), "{err}");
}

#[test]
fn window_larger_than_the_model_positions_is_rejected() {
    let err = clinsearch::model::Encoder::load(
        fixture("tiny-mlm-uncased").to_str().unwrap(),
        &EncoderOptions {
            window: WindowConfig {
                size: Some(1000),
                stride: None,
                max_windows: None,
                context: None,
            },
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn gpu_devices_without_their_feature_are_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = clinsearch::model::parse_device("cuda:0").err().unwrap();
    assert!(err.to_string().contains("`cuda` feature"), "{err}");
    assert!(clinsearch::model::parse_device("tpu").is_err());
    assert!(clinsearch::model::parse_dtype("int3").is_err());
}

#[test]
fn reduced_precision_stays_close_to_f32() {
    let texts = ["History of CHF, s/p MI in 2019; on metoprolol 25 mg BID."];
    let f32_enc = load(&fixture("tiny-mlm-uncased"), EncoderOptions::default());
    let want = &f32_enc.embed(&texts).unwrap()[0];
    for dtype in [candle_core::DType::BF16, candle_core::DType::F16] {
        let enc = load(
            &fixture("tiny-mlm-uncased"),
            EncoderOptions {
                dtype,
                ..Default::default()
            },
        );
        let got = &enc.embed(&texts).unwrap()[0];
        let c = cosine(got, want);
        assert!(c > 0.99, "{dtype:?}: cosine {c} to f32");
    }
}
