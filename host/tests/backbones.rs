//! Backbone tests: parity with the golden activations (`../shared/data/golden`), ImageNet
//! classification with the full classifiers, weight-file error handling, VGG-16 (PANet) shapes
//! and key mapping, BatchNorm freezing.
//!
//! The ImageNet tests need the converted weights in `weights/` (made by `scripts/setup.sh`); they
//! fail, not skip, when the weights are missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use host::backbone::{self, Backbone, BackboneKind, BackboneOptions};
use host::imagenet_classes::class_name;
use host::npy;
use image::imageops::FilterType;
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{repo_root, shared_data, weights};

fn golden(name: &str) -> PathBuf {
    shared_data().join("golden").join(name)
}

fn load_classifier(kind: BackboneKind) -> Backbone {
    let opts = BackboneOptions {
        with_classifier: true,
        ..Default::default()
    };
    backbone::load_with(kind, &weights(kind), Device::Cpu, opts).unwrap_or_else(|e| panic!("{e:#}"))
}

fn read_npy(path: &Path) -> Tensor {
    let (shape, data) = npy::read_f32(path).unwrap_or_else(|e| panic!("{e}"));
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&data).view(shape.as_slice())
}

/// RGB image resized to `w x h` (bilinear, no aspect kept), /255, normalised for `kind`.
fn image_tensor(path: &Path, w: u32, h: u32, kind: BackboneKind) -> Tensor {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let r = image::imageops::resize(&img, w, h, FilterType::Triangle);
    let (mean, std) = kind.normalization();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in r.enumerate_pixels() {
        for c in 0..3 {
            data[c * h * w + y as usize * w + x as usize] =
                (p[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Tensor::from_slice(&data).view([1, 3, h as i64, w as i64])
}

fn top5(bb: &Backbone, x: &Tensor) -> Vec<usize> {
    let logits = tch::no_grad(|| bb.classify(x, false)).unwrap();
    assert_eq!(logits.size(), vec![1, 1000]);
    let (_, idx) = logits.topk(5, 1, true, true);
    Vec::<i64>::try_from(idx.view([-1]))
        .unwrap()
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

fn names(idx: &[usize]) -> Vec<&'static str> {
    idx.iter().map(|&i| class_name(i).unwrap()).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// ---------------------------------------------------------------------------------------------
// Golden parity: the proof that layers, padding, eps and weights are right.

fn golden_parity(kind: BackboneKind, prefix: &str) {
    let x = read_npy(&golden(&format!("{prefix}_input.npy")));
    let want = read_npy(&golden(&format!("{prefix}_s16.npy")));
    let bb = backbone::load(kind, &weights(kind), Device::Cpu).unwrap_or_else(|e| panic!("{e:#}"));
    let got = tch::no_grad(|| bb.forward_to(&x, 16, false)).unwrap();
    assert_eq!(got.size(), want.size(), "{kind} stride-16 shape");
    assert_eq!(got.size()[1], bb.feature_channels(16).unwrap());
    let diff = max_abs_diff(&got, &want);
    println!(
        "{kind}: stride-16 features {:?}, max abs diff vs golden = {diff:.3e}",
        got.size()
    );
    assert!(
        diff <= 1e-4,
        "{kind}: max abs diff {diff:.3e} > 1e-4 against {prefix}_s16.npy"
    );

    // features() computes the same level (and the shallower ones) in one pass.
    let levels = tch::no_grad(|| bb.features(&x, false));
    let s16 = levels.get(16).expect("stride-16 level");
    assert_eq!(max_abs_diff(s16, &got), 0.0);
    let (h, w) = (x.size()[2], x.size()[3]);
    for lvl in &levels.levels {
        let s = lvl.tensor.size();
        assert_eq!(
            s[1],
            kind.feature_channels(lvl.stride).unwrap(),
            "{kind} {} channels",
            lvl.name
        );
        assert_eq!(
            (s[2], s[3]),
            (
                (h + lvl.stride - 1) / lvl.stride,
                (w + lvl.stride - 1) / lvl.stride
            )
        );
    }
    assert_eq!(
        levels.levels.iter().map(|l| l.stride).collect::<Vec<_>>(),
        kind.feature_strides()
    );
}

#[test]
fn golden_parity_mobilenetv2() {
    golden_parity(BackboneKind::MobileNetV2, "mnv2");
}

#[test]
fn golden_parity_efficientnet_lite0() {
    golden_parity(BackboneKind::EfficientNetLite0, "effl0");
}

// ---------------------------------------------------------------------------------------------
// Full classifiers.

fn golden_top5(key: &str) -> Vec<usize> {
    let text = std::fs::read_to_string(golden("golden.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["files"][key]["top5_224"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

/// Asserts: the same top-1 class as golden.json's `top5_224`, and the same set of five classes
/// (the order of ranks 2-5 may differ: our bilinear resize is the `image` crate's, not PIL's).
fn classifier_top5(kind: BackboneKind, key: &str) {
    let bb = load_classifier(kind);
    let img = shared_data().join("coco128/images/train2017/000000000025.jpg");
    let got = top5(&bb, &image_tensor(&img, 224, 224, kind));
    let want = golden_top5(key);
    println!(
        "{kind}: top-5 {got:?} {:?}; golden {want:?} {:?}",
        names(&got),
        names(&want)
    );
    assert_eq!(got[0], want[0], "{kind}: top-1 differs from golden.json");
    let mut a = got.clone();
    let mut b = want.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{kind}: top-5 set differs from golden.json");
}

#[test]
fn classifier_top5_mobilenetv2() {
    classifier_top5(BackboneKind::MobileNetV2, "mnv2");
}

#[test]
fn classifier_top5_efficientnet_lite0() {
    classifier_top5(BackboneKind::EfficientNetLite0, "effl0");
}

/// Small COCO photos (tests/fixtures/photos, see tests/fixtures/README.md) and their ImageNet
/// top-1 class, for both classifiers.
const PHOTOS: [(&str, &str); 3] = [
    ("zebra.jpg", "zebra"),
    ("hotdog.jpg", "hotdog"),
    ("school_bus.jpg", "school_bus"),
];

#[test]
fn classifiers_name_the_fixture_photos() {
    let dir = repo_root().join("tests/fixtures/photos");
    for kind in [BackboneKind::MobileNetV2, BackboneKind::EfficientNetLite0] {
        let bb = load_classifier(kind);
        for (file, class) in PHOTOS {
            let got = top5(&bb, &image_tensor(&dir.join(file), 224, 224, kind));
            println!("{kind} {file}: top-5 {:?}", names(&got));
            assert_eq!(
                class_name(got[0]),
                Some(class),
                "{kind} {file}: top-5 {:?}",
                names(&got)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Weight-file errors: each is an Err naming the file, never a panic.

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("host-backbones-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file of `tensors` (name, shape, f32 little-endian bytes).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The parameters of a freshly initialised backbone, as safetensors entries.
fn random_state(kind: BackboneKind, with_classifier: bool) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root(),
        kind,
        BackboneOptions {
            with_classifier,
            ..Default::default()
        },
    )
    .unwrap();
    bb.named_parameters()
        .into_iter()
        .map(|(n, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (n, shape, tensor_bytes(&t))
        })
        .collect()
}

fn load_err(kind: BackboneKind, path: &Path) -> String {
    match backbone::load(kind, path, Device::Cpu) {
        Ok(_) => panic!("loading {} as {kind} should fail", path.display()),
        Err(e) => {
            let msg = format!("{e:#}");
            println!("{msg}");
            assert!(!msg.contains('\n'), "error should be one line: {msg}");
            assert!(
                msg.contains(&path.display().to_string()),
                "error should name the file: {msg}"
            );
            msg
        }
    }
}

#[test]
fn missing_weight_file_is_an_error() {
    let p = temp_dir("missing").join("nope.safetensors");
    let msg = load_err(BackboneKind::EfficientNetLite0, &p);
    assert!(msg.contains("setup.sh"), "{msg}");
    let msg = load_err(BackboneKind::Vgg16Panet, &p);
    assert!(msg.contains("--torchvision-vgg16"), "{msg}");
}

#[test]
fn truncated_weight_file_is_an_error() {
    let dir = temp_dir("truncated");
    let full = dir.join("full.safetensors");
    write_safetensors(&full, &random_state(BackboneKind::MobileNetV2, false));
    let bytes = std::fs::read(&full).unwrap();
    // The complete file loads.
    backbone::load(BackboneKind::MobileNetV2, &full, Device::Cpu).unwrap();
    for (name, len) in [
        ("half", bytes.len() / 2),
        ("header", 100),
        ("tiny", 3),
        ("empty", 0),
    ] {
        let p = dir.join(format!("{name}.safetensors"));
        std::fs::write(&p, &bytes[..len]).unwrap();
        let msg = load_err(BackboneKind::MobileNetV2, &p);
        assert!(msg.contains("not a valid safetensors file"), "{msg}");
    }
    // Not a safetensors file at all (e.g. the legacy .pth pickle).
    let p = dir.join("garbage.pth");
    std::fs::write(&p, b"\x80\x02}q\x00(X\x0b\x00\x00\x00not weights").unwrap();
    load_err(BackboneKind::MobileNetV2, &p);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_shape_and_missing_tensors_are_errors() {
    let dir = temp_dir("shape");
    let mut state = random_state(BackboneKind::EfficientNetLite0, false);
    let i = state
        .iter()
        .position(|(n, _, _)| n == "_blocks.3._depthwise_conv.weight")
        .unwrap();
    let (n, shape, _) = state[i].clone();
    let bad_shape = vec![shape[0], shape[1], 3, 3]; // 5x5 in Lite0
    let numel: usize = bad_shape.iter().product();
    state[i] = (n, bad_shape, vec![0u8; numel * 4]);
    let p = dir.join("bad-shape.safetensors");
    write_safetensors(&p, &state);
    let msg = load_err(BackboneKind::EfficientNetLite0, &p);
    assert!(
        msg.contains("_blocks.3._depthwise_conv.weight") && msg.contains("shape"),
        "{msg}"
    );

    // A missing tensor.
    let mut state = random_state(BackboneKind::EfficientNetLite0, false);
    state.retain(|(n, _, _)| n != "_bn0.running_var");
    let p = dir.join("missing-tensor.safetensors");
    write_safetensors(&p, &state);
    let msg = load_err(BackboneKind::EfficientNetLite0, &p);
    assert!(
        msg.contains("missing") && msg.contains("_bn0.running_var"),
        "{msg}"
    );

    // The weights of another backbone.
    let p = dir.join("mobilenet.safetensors");
    write_safetensors(&p, &random_state(BackboneKind::MobileNetV2, false));
    let msg = load_err(BackboneKind::EfficientNetLite0, &p);
    assert!(
        msg.contains("none of the efficientnet-lite0 tensors is there"),
        "{msg}"
    );

    // A classifier asked of a file without one.
    let p = dir.join("no-head.safetensors");
    write_safetensors(&p, &random_state(BackboneKind::MobileNetV2, false));
    let opts = BackboneOptions {
        with_classifier: true,
        ..Default::default()
    };
    let e = backbone::load_with(BackboneKind::MobileNetV2, &p, Device::Cpu, opts).unwrap_err();
    assert!(format!("{e:#}").contains("features.18.0.weight"), "{e:#}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// VGG-16 (PANet variant).

#[test]
fn vgg16_panet_shapes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root(),
        BackboneKind::Vgg16Panet,
        BackboneOptions::default(),
    )
    .unwrap();
    let x = Tensor::randn([1, 3, 417, 417], (Kind::Float, Device::Cpu));
    let levels = tch::no_grad(|| bb.features(&x, false));
    assert_eq!(levels.get(8).unwrap().size(), vec![1, 512, 53, 53]);
    assert_eq!(levels.get(4).unwrap().size(), vec![1, 256, 105, 105]);
    // No ReLU after conv5_3: random-init features have negative values.
    assert!(levels.get(8).unwrap().min().double_value(&[]) < 0.0);
    assert!(bb
        .forward_to(&x, 16, false)
        .unwrap_err()
        .to_string()
        .contains("available: 4, 8"));
    // 13 convs with weight + bias, all trainable.
    assert_eq!(bb.named_parameters().len(), 26);
    assert_eq!(vs.trainable_variables().len(), 26);
    assert!(Backbone::new(
        &vs.root().sub("other"),
        BackboneKind::Vgg16Panet,
        BackboneOptions {
            with_classifier: true,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn vgg16_loads_torchvision_keys() {
    // torchvision vgg16 state-dict names: features.{0,2,5,...,28}.{weight,bias} plus classifier.*
    let dir = temp_dir("vgg");
    let mut state = Vec::new();
    let convs = [
        (0, 3, 64),
        (2, 64, 64),
        (5, 64, 128),
        (7, 128, 128),
        (10, 128, 256),
        (12, 256, 256),
        (14, 256, 256),
        (17, 256, 512),
        (19, 512, 512),
        (21, 512, 512),
        (24, 512, 512),
        (26, 512, 512),
        (28, 512, 512),
    ];
    let mut expect = HashMap::new();
    for (k, (idx, cin, cout)) in convs.into_iter().enumerate() {
        let w = Tensor::full(
            [cout, cin, 3, 3],
            k as f64 * 0.01,
            (Kind::Float, Device::Cpu),
        );
        let b = Tensor::full([cout], -(k as f64), (Kind::Float, Device::Cpu));
        state.push((
            format!("features.{idx}.weight"),
            vec![cout as usize, cin as usize, 3, 3],
            tensor_bytes(&w),
        ));
        state.push((
            format!("features.{idx}.bias"),
            vec![cout as usize],
            tensor_bytes(&b),
        ));
        expect.insert(format!("features.{idx}.weight"), k as f64 * 0.01);
        expect.insert(format!("features.{idx}.bias"), -(k as f64));
    }
    state.push(("classifier.6.bias".into(), vec![1000], vec![0u8; 4000]));
    let p = dir.join("vgg16.safetensors");
    write_safetensors(&p, &state);
    let bb = backbone::load(BackboneKind::Vgg16Panet, &p, Device::Cpu)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let params = bb.named_parameters();
    assert_eq!(params.len(), 26);
    for (name, t) in params {
        let want = expect[&name];
        let got = t.mean(Kind::Float).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{name}: {got} vs {want}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// BatchNorm modes, names, parsing.

#[test]
fn batchnorm_frozen_by_default_and_updates_when_unfrozen() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut bb = Backbone::new(
        &vs.root(),
        BackboneKind::MobileNetV2,
        BackboneOptions::default(),
    )
    .unwrap();
    assert!(bb.bn_frozen());
    let rm = bb
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "features.0.1.running_mean")
        .unwrap()
        .1;
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)) + 3.0;
    let _ = bb.forward_to(&x, 8, true).unwrap();
    assert_eq!(
        rm.abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "frozen BN must not update running stats"
    );
    bb.set_bn_frozen(false);
    let y = bb.forward_to(&x, 8, true).unwrap();
    assert!(
        rm.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "training BN must update running stats"
    );
    // Gradients reach the parameters.
    y.sum(Kind::Float).backward();
    let w = bb
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "features.0.0.weight")
        .unwrap()
        .1;
    assert!(w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Running stats are not trainable.
    let params = bb.named_parameters();
    let running = params
        .iter()
        .filter(|(n, _)| n.contains(".running_"))
        .count();
    assert!(running > 0);
    assert_eq!(
        vs.trainable_variables().len(),
        params.len() - running,
        "running stats must not be trainable"
    );
}

#[test]
fn variables_live_under_the_given_path_with_state_dict_names() {
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root().sub("encoder"),
        BackboneKind::EfficientNetLite0,
        BackboneOptions::default(),
    )
    .unwrap();
    let vars = vs.variables();
    for (name, _) in bb.named_parameters() {
        assert!(
            vars.contains_key(&format!("encoder.{name}")),
            "encoder.{name} not in the VarStore"
        );
    }
    assert!(vars.contains_key("encoder._blocks.10._project_conv.weight"));
    assert!(
        !vars.contains_key("encoder._fc.weight"),
        "no classifier unless asked"
    );
    assert_eq!(
        bb.tap(16).unwrap().layer,
        host::backbone::efficientnet_lite::STRIDE16_BLOCK + 1
    );
    assert_eq!(bb.layers_to(16).unwrap().len(), 12);
}

#[test]
fn backbone_names_parse() {
    for k in BackboneKind::ALL {
        assert_eq!(k.name().parse::<BackboneKind>().unwrap(), k);
        assert_eq!(k.to_string(), k.name());
    }
    let e = "resnet50".parse::<BackboneKind>().unwrap_err().to_string();
    assert!(
        e.contains("resnet50") && e.contains("efficientnet-lite0, mobilenetv2, vgg16"),
        "{e}"
    );
}

#[test]
fn default_weights_path_uses_the_env_override() {
    // Only reads the variable if set by the caller; otherwise checks the repo-relative default.
    let p = backbone::default_weights_path(BackboneKind::MobileNetV2);
    assert!(p.ends_with("mobilenetv2.safetensors"), "{}", p.display());
    if std::env::var_os(backbone::WEIGHTS_DIR_ENV).is_none() {
        assert_eq!(p.parent().unwrap().file_name().unwrap(), "weights");
    }
}

#[test]
fn converted_weights_record_their_source() {
    for kind in [BackboneKind::MobileNetV2, BackboneKind::EfficientNetLite0] {
        let meta = backbone::weights_metadata(&weights(kind)).unwrap();
        let sha = meta.get("source_sha256").map(String::as_str).unwrap_or("");
        assert_eq!(sha.len(), 64, "{kind}: metadata {meta:?}");
        assert!(
            meta.contains_key("source_file"),
            "{kind}: metadata {meta:?}"
        );
    }
}
