//! The runtime on test bundles written by `fss_tests::testkit`: parity of the tract backend with a
//! direct Rust computation, and every bad input refused with a one-line error, no panic.

use fss_core::bundle::{Dim, Manifest, MANIFEST_FILE};
use fss_core::model::FeatureEncoder;
use fss_core::preprocess::InputSize;
use fss_core::prototype::panet_predict;
use fss_runtime::cache::{CacheKey, PrototypeCache};
use fss_runtime::{
    compute_prototypes, Bundle, BundleEncoder, InferenceBackend, SupportShotSpec, TargetSpec,
    TensorRef, TractBackend,
};
use fss_tests::testkit::{
    reference_features, write_test_bundle, write_test_bundle_with_channels, TEST_CHANNELS,
};
use fss_tests::TempDir;
use image::{GrayImage, Luma};
use std::path::Path;

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// The error of a failed result, checked to be one line naming `needle`.
fn one_line_err<T>(r: fss_core::Result<T>, needles: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "error is not one line: {e}");
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
    e
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn tract_matches_direct_computation_at_several_sizes() {
    let tmp = TempDir::new("edge-parity");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 40, 56);
    let mut enc = BundleEncoder::open(&dir).unwrap();
    assert_eq!(enc.default_size(), InputSize::new(40, 56));
    assert_eq!(enc.backend_name(), "tract");
    for (h, w) in [(40, 56), (33, 47), (64, 64), (40, 56)] {
        let input = pseudo_random(3 * h * w, (h * w) as u32);
        let got = enc.encode(&input, InputSize::new(h, w)).unwrap();
        let want = reference_features(&input, h, w, TEST_CHANNELS);
        assert_eq!(
            (got.channels, got.height, got.width),
            (TEST_CHANNELS, h.div_ceil(4), w.div_ceil(4))
        );
        let diff = got.max_abs_diff(&want).unwrap();
        assert!(diff < 1e-4, "{h}x{w}: max abs diff {diff}");
    }
    // The FeatureEncoder adapter gives the same features.
    let input = pseudo_random(3 * 40 * 56, 9);
    let batch = enc
        .encode_batch(&[input.clone(), input.clone()], InputSize::new(40, 56))
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(
        batch[0],
        enc.encode(&input, InputSize::new(40, 56)).unwrap()
    );
}

#[test]
fn pinned_plan_equals_symbolic_plan_and_plans_are_bounded() {
    let tmp = TempDir::new("edge-symbolic");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 24, 24);
    let mut backend = TractBackend::open(&dir.join("encoder.onnx")).unwrap();
    assert_eq!(backend.inputs()[0].name, "image");
    assert_eq!(backend.outputs()[0].name, "features");
    assert_eq!(
        backend.inputs()[0].dims.as_ref().unwrap()[2],
        Dim::Symbol("H".into())
    );
    let shape = [1usize, 3, 24, 36];
    let input = pseudo_random(3 * 24 * 36, 5);
    let t = TensorRef::new(&shape, &input).unwrap();
    let pinned = backend.run(&[t]).unwrap();
    let symbolic = backend.run_symbolic(&[t]).unwrap();
    assert_eq!(pinned[0].shape, vec![1, 16, 6, 9]);
    assert_eq!(pinned[0].shape, symbolic[0].shape);
    let diff = pinned[0]
        .data
        .iter()
        .zip(&symbolic[0].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "pinned vs symbolic {diff}");
    let outs = backend.prepare(&[vec![1, 3, 24, 36]]).unwrap();
    assert_eq!(outs[0], Some(vec![1, 16, 6, 9]));
    for k in 0..6 {
        backend.prepare(&[vec![1, 3, 16 + 4 * k, 16]]).unwrap();
    }
    assert_eq!(backend.plan_count(), fss_runtime::tract_backend::MAX_PLANS);
    // Wrong tensor sizes are errors, not panics.
    assert!(TensorRef::new(&shape, &input[1..]).is_err());
    let bad = [1usize, 4, 24, 36];
    let data = vec![0.0; 4 * 24 * 36];
    one_line_err(
        backend.run(&[TensorRef::new(&bad, &data).unwrap()]),
        &["encoder.onnx", "image"],
    );
}

#[test]
fn truncated_onnx_is_refused() {
    let tmp = TempDir::new("edge-trunc");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    let g = dir.join("encoder.onnx");
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() / 2]).unwrap();
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "not a valid ONNX model"],
    );
    std::fs::write(&g, b"").unwrap();
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "not a valid ONNX model"],
    );
}

#[test]
fn corrupt_onnx_is_refused() {
    let tmp = TempDir::new("edge-corrupt");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    let g = dir.join("encoder.onnx");
    let mut s = 77u32;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 24) as u8
        })
        .collect();
    std::fs::write(&g, junk).unwrap();
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "not a valid ONNX model"],
    );
}

#[test]
fn changed_graph_file_is_refused_by_its_hash() {
    use prost::Message;
    let tmp = TempDir::new("edge-sha");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    let g = dir.join("encoder.onnx");
    let mut m = tract_onnx::pb::ModelProto::decode(std::fs::read(&g).unwrap().as_slice()).unwrap();
    m.producer_name = "someone else".into();
    std::fs::write(&g, m.encode_to_vec()).unwrap();
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "sha256", "bundle.json"],
    );
}

#[test]
fn unknown_bundle_format_is_refused() {
    let tmp = TempDir::new("edge-format");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| v["format"] = serde_json::json!(99));
    one_line_err(BundleEncoder::open(&dir), &["bundle.json", "format 99"]);
}

#[test]
fn manifest_and_graph_channels_disagree() {
    let tmp = TempDir::new("edge-channels");
    // Manifest says 16 feature channels, the graph declares and gives 8.
    let dir = tmp.path().join("declared");
    write_test_bundle_with_channels(&dir, 32, 32, 8, 16);
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "features", "16"],
    );
    // The manifest leaves the channel dim symbolic: caught on the real output shape.
    let dir = tmp.path().join("symbolic");
    write_test_bundle_with_channels(&dir, 32, 32, 8, 16);
    edit_manifest(&dir, |v| {
        v["graphs"]["encoder"]["outputs"][0]["shape"][1] = serde_json::json!("C")
    });
    let mut enc = BundleEncoder::open(&dir).unwrap();
    one_line_err(
        enc.prepare(InputSize::new(32, 32)),
        &["encoder.onnx", "feature.channels 16", "[1, 8, 8, 8]"],
    );
    // A manifest whose feature.channels disagrees with its own output shape.
    let dir = tmp.path().join("inconsistent");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| v["feature"]["channels"] = serde_json::json!(32));
    one_line_err(BundleEncoder::open(&dir), &["bundle.json", "32"]);
    // A wrong stride.
    let dir = tmp.path().join("stride");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| v["feature"]["stride"] = serde_json::json!(8));
    let mut enc = BundleEncoder::open(&dir).unwrap();
    one_line_err(
        enc.prepare(InputSize::new(32, 32)),
        &["encoder.onnx", "stride 8"],
    );
}

#[test]
fn input_names_and_ranks_must_match() {
    let tmp = TempDir::new("edge-names");
    let dir = tmp.path().join("name");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| {
        v["graphs"]["encoder"]["inputs"][0]["name"] = serde_json::json!("input")
    });
    one_line_err(
        BundleEncoder::open(&dir),
        &["encoder.onnx", "image", "input"],
    );
    let dir = tmp.path().join("out");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| {
        v["graphs"]["encoder"]["outputs"][0]["name"] = serde_json::json!("feats")
    });
    one_line_err(BundleEncoder::open(&dir), &["encoder.onnx", "feats"]);
    let dir = tmp.path().join("rank");
    write_test_bundle(&dir, 32, 32);
    edit_manifest(&dir, |v| {
        v["graphs"]["encoder"]["outputs"][0]["shape"] = serde_json::json!([1, 16, "h", "w", 1]);
    });
    one_line_err(BundleEncoder::open(&dir), &["bundle.json", "features"]);
}

#[test]
fn missing_graph_file_and_missing_bundle() {
    let tmp = TempDir::new("edge-missing");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    std::fs::remove_file(dir.join("encoder.onnx")).unwrap();
    one_line_err(BundleEncoder::open(&dir), &["encoder.onnx", "missing"]);
    one_line_err(
        BundleEncoder::open(&tmp.path().join("nope")),
        &["nope", "does not exist"],
    );
    let e = one_line_err(Bundle::open(&tmp.path().join("nope")), &["nope"]);
    assert!(e.contains("bundle folder"), "{e}");
}

fn two_targets(image: &Path, m1: &Path, m2: &Path) -> Vec<TargetSpec> {
    vec![
        TargetSpec {
            name: "red".into(),
            shots: vec![SupportShotSpec {
                image: image.to_path_buf(),
                mask: m1.to_path_buf(),
            }],
        },
        TargetSpec {
            name: "green".into(),
            shots: vec![SupportShotSpec {
                image: image.to_path_buf(),
                mask: m2.to_path_buf(),
            }],
        },
    ]
}

#[test]
fn two_way_segmentation_finds_both_targets() {
    let tmp = TempDir::new("edge-nway");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 64, 64);
    let (image, m1, m2) = fss_tests::write_two_object_scene(tmp.path(), "support", 96, 80, 3, 0.0);
    let mut enc = BundleEncoder::open(&dir).unwrap();
    let size = enc.default_size();
    let protos = compute_prototypes(&mut enc, &two_targets(&image, &m1, &m2), size).unwrap();
    assert_eq!(protos.targets(), 2);
    let (q, _, _) = fss_tests::write_two_object_scene(tmp.path(), "query", 120, 90, 8, 0.04);
    let img = fss_core::image_io::load_rgb(&q).unwrap();
    let f = enc.encode_image(&img, size).unwrap();
    let labels = panet_predict(&f, protos.prototypes(), (90, 120)).unwrap();
    assert_eq!((labels.height, labels.width), (90, 120));
    let at = |x: f32, y: f32| labels.data[(y * 90.0) as usize * 120 + (x * 120.0) as usize];
    assert_eq!(at(0.32, 0.35), 1, "red disk centre");
    assert_eq!(at(0.66, 0.65), 2, "green disk centre");
    assert_eq!(at(0.05, 0.95), 0, "background corner");
    // Several shots for one target work too.
    let (image2, m1b, _) =
        fss_tests::write_two_object_scene(tmp.path(), "support2", 80, 80, 5, 0.05);
    let one = vec![TargetSpec {
        name: "red".into(),
        shots: vec![
            SupportShotSpec {
                image: image.clone(),
                mask: m1.clone(),
            },
            SupportShotSpec {
                image: image2,
                mask: m1b,
            },
        ],
    }];
    let p = compute_prototypes(&mut enc, &one, size).unwrap();
    assert_eq!(p.targets(), 1);
}

#[test]
fn bad_supports_are_refused() {
    let tmp = TempDir::new("edge-bad-support");
    let dir = tmp.path().join("bundle");
    write_test_bundle(&dir, 32, 32);
    let mut enc = BundleEncoder::open(&dir).unwrap();
    let size = enc.default_size();
    let (image, m1, m2) = fss_tests::write_two_object_scene(tmp.path(), "s", 64, 48, 1, 0.0);
    // Empty mask.
    let empty = tmp.path().join("empty.png");
    GrayImage::new(64, 48).save(&empty).unwrap();
    one_line_err(
        compute_prototypes(&mut enc, &two_targets(&image, &m1, &empty), size),
        &["empty.png", "empty"],
    );
    // Mask of another size: names both files.
    let small = tmp.path().join("small.png");
    GrayImage::from_pixel(32, 24, Luma([255]))
        .save(&small)
        .unwrap();
    one_line_err(
        compute_prototypes(&mut enc, &two_targets(&image, &small, &m2), size),
        &["small.png", "s.jpg"],
    );
    // Not an image as support image, and as mask.
    let text = tmp.path().join("notes.jpg");
    std::fs::write(&text, b"hello, not an image").unwrap();
    one_line_err(
        compute_prototypes(&mut enc, &two_targets(&text, &m1, &m2), size),
        &["notes.jpg"],
    );
    one_line_err(
        compute_prototypes(&mut enc, &two_targets(&image, &text, &m2), size),
        &["notes.jpg"],
    );
    // Missing file.
    let gone = tmp.path().join("gone.jpg");
    one_line_err(
        compute_prototypes(&mut enc, &two_targets(&gone, &m1, &m2), size),
        &["gone.jpg"],
    );
    // Duplicate target names.
    let mut t = two_targets(&image, &m1, &m2);
    t[1].name = "red".into();
    one_line_err(compute_prototypes(&mut enc, &t, size), &["red", "twice"]);
    // An object that vanishes at the model size.
    let dot = tmp.path().join("dot.png");
    let mut g = GrayImage::new(64, 48);
    g.put_pixel(1, 1, Luma([255]));
    g.save(&dot).unwrap();
    one_line_err(
        compute_prototypes(
            &mut enc,
            &two_targets(&image, &dot, &m2),
            InputSize::new(16, 16),
        ),
        &["dot.png", "vanishes"],
    );
}

#[test]
fn cache_for_another_bundle_is_refused() {
    let tmp = TempDir::new("edge-cache");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write_test_bundle(&a, 32, 32);
    write_test_bundle(&b, 48, 48);
    let ba = Bundle::open(&a).unwrap();
    let bb = Bundle::open(&b).unwrap();
    assert_ne!(ba.hash, bb.hash);
    assert_eq!(Bundle::open(&a).unwrap().hash, ba.hash, "hash is stable");
    let mut enc = BundleEncoder::open(&a).unwrap();
    let size = InputSize::new(32, 32);
    let (image, m1, m2) = fss_tests::write_two_object_scene(tmp.path(), "s", 64, 48, 1, 0.0);
    let targets = two_targets(&image, &m1, &m2);
    let protos = compute_prototypes(&mut enc, &targets, size).unwrap();
    let key_a = CacheKey::new(&ba.hash, size, &ba.normalization());
    let records = fss_runtime::support::support_records(&targets).unwrap();
    let path = tmp.path().join("state/protos.json");
    let names = vec!["red".to_string(), "green".to_string()];
    PrototypeCache::new(key_a.clone(), names.clone(), records.clone(), &protos)
        .write(&path)
        .unwrap();
    let c = PrototypeCache::load(&path, &key_a).unwrap();
    assert_eq!(
        c.support(&path, fss_core::method::Method::Panet).unwrap(),
        protos
    );
    assert!(c.same_supports(&names, &records));
    let key_b = CacheKey::new(&bb.hash, size, &bb.normalization());
    one_line_err(
        PrototypeCache::load(&path, &key_b),
        &["protos.json", "another bundle"],
    );
    let key_size = CacheKey::new(&ba.hash, InputSize::new(64, 64), &ba.normalization());
    one_line_err(
        PrototypeCache::load(&path, &key_size),
        &["protos.json", "32x32"],
    );
    std::fs::write(&path, b"\x00\x01garbage").unwrap();
    one_line_err(
        PrototypeCache::load(&path, &key_a),
        &["protos.json", "not a prototype cache"],
    );
}

#[test]
fn manifest_round_trips_through_testkit() {
    let tmp = TempDir::new("edge-manifest");
    let dir = tmp.path().join("bundle");
    let m = write_test_bundle(&dir, 40, 24);
    assert_eq!(Manifest::read(&dir).unwrap(), m);
    assert_eq!(m.feature.channels, TEST_CHANNELS);
}

/// Structurally broken graphs (each a mutation of the test encoder) end in an error at load,
/// plan or run time, never in a panic.
#[test]
fn malformed_graphs_are_errors_not_panics() {
    use prost::Message;
    use tract_onnx::pb;
    let tmp = TempDir::new("edge-malformed");
    let base =
        pb::ModelProto::decode(fss_tests::testkit::test_encoder_onnx(16).as_slice()).unwrap();
    type Mutation = fn(&mut pb::GraphProto);
    let mutations: Vec<(&str, Mutation)> = vec![
        ("unknown-op", |g| g.node[1].op_type = "FrobnicateNd".into()),
        ("missing-input", |g| g.node[2].input[0] = "nowhere".into()),
        ("short-raw-data", |g| {
            let t = &mut g.initializer[0];
            t.raw_data.truncate(t.raw_data.len() / 3);
        }),
        ("weight-rank", |g| g.initializer[2].dims = vec![16, 72]),
        ("zero-stride", |g| g.node[0].attribute[1].ints = vec![0, 0]),
        ("huge-pads", |g| {
            g.node[0].attribute[2].ints = vec![-100, -100, -100, -100]
        }),
        ("no-nodes", |g| g.node.clear()),
        ("kernel-attr", |g| {
            g.node[2].attribute[0].ints = vec![5, 5, 5]
        }),
    ];
    for (name, mutate) in mutations {
        let mut m = base.clone();
        mutate(m.graph.as_mut().unwrap());
        let dir = tmp.path().join(name);
        write_test_bundle(&dir, 32, 32);
        let g = dir.join("encoder.onnx");
        std::fs::write(&g, m.encode_to_vec()).unwrap();
        let sha = fss_core::bundle::sha256_file(&g).unwrap();
        edit_manifest(&dir, |v| {
            v["graphs"]["encoder"]["sha256"] = serde_json::json!(sha)
        });
        let result = BundleEncoder::open(&dir).and_then(|mut enc| {
            let input = vec![0.5f32; 3 * 32 * 32];
            enc.encode(&input, InputSize::new(32, 32)).map(|_| ())
        });
        let e = one_line_err(result, &["encoder.onnx"]);
        if name == "zero-stride" {
            // tract 0.23.9 divides by zero here: the panic is caught and reported.
            assert!(e.contains("tract panicked"), "{e}");
        }
    }
}
