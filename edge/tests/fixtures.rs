//! The real-image fixtures of `tests/fixtures/datasets` (COCO 2017 and DAVIS 2016 images,
//! downscaled; see its README): every reader opens its fixture and `check_dataset` finds no
//! problem in the layouts it knows.

use std::path::{Path, PathBuf};

use fss_core::choice::Choice;
use fss_core::davis::{DavisDataset, DavisKind};
use fss_core::image_io::load_label_png;
use fss_core::model::{FeatureEncoder, ScoringInput};
use fss_core::preprocess::{InputSize, Normalization};
use fss_core::report::EvalReport;
use fss_core::FeatureMap;
use fss_lab::data::check::{check_dataset, DataFormat};
use fss_lab::data::coco::CocoMaskDataset;
use fss_lab::data::coco_json::{ClassMaskOptions, CocoInstances};
use fss_lab::data::pascal::{pascal_fold_classes, PascalDataset, PascalOptions, VoidLabel, VOID};
use fss_lab::episodes::{plan_episodes, Eligibility, EpisodeSource, Sampling};
use fss_lab::eval::{
    run_protocol, score_episodes, Protocol, ProtocolRequest, Scoring, PASCAL_MIN_PIXELS,
};
use fss_lab::presets::{Benchmark, Preset};
use fss_tests::testkit::write_test_bundle;

mod common;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/datasets")
}

fn assert_no_problems(root: &Path, format: DataFormat) {
    let report = check_dataset(root, format);
    let lines: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(report.is_ok(), "{}: {lines:#?}", root.display());
    assert!(
        report.images > 0 && report.masks > 0,
        "{}",
        report.summary()
    );
}

#[test]
fn davis_fixture_opens_and_checks_clean() {
    let root = fixtures().join("davis");
    let ds = DavisDataset::open(&root).unwrap();
    assert_eq!(ds.kind(), DavisKind::SingleObject);
    assert_eq!(ds.sequences().len(), 1);
    let seq = &ds.sequences()[0];
    assert_eq!((seq.name.as_str(), seq.len()), ("cows", 5));
    for f in 0..seq.len() {
        let image = ds.load_image(0, f).unwrap();
        assert_eq!(image.dimensions(), (160, 90));
        let gt = ds.ground_truth(0, f, None).unwrap();
        assert_eq!((gt.width, gt.height), (160, 90));
        assert!(gt.count_nonzero() > 0, "frame {f}: empty mask");
    }
    assert_no_problems(&root, DataFormat::Davis);
}

#[test]
fn coco_fixture_opens_and_checks_clean() {
    let root = fixtures().join("coco");
    let ds = CocoMaskDataset::open(&root).unwrap();
    assert_eq!(ds.categories().len(), 80);
    assert_eq!(ds.len(), 6);
    for i in 0..ds.len() {
        let im = ds.image(i).unwrap();
        assert_eq!(im.width.max(im.height), 160, "{}", im.rel_path);
        assert_eq!(
            ds.load_image(i).unwrap().dimensions(),
            (im.width, im.height)
        );
    }
    // person (class index 1) is in 5 of the 6 images (not in 000000000071).
    assert_eq!(ds.eligible_images(1, 1).len(), 5);
    assert_no_problems(&root, DataFormat::Coco);
}

/// The instances JSON (polygons scaled with the images) rasterised in Rust against the PNG
/// masks (the panoptic masks nearest-downscaled): pixels that either side labels with a thing
/// category, and the share of them with the same category.
#[test]
fn coco_json_fixture_agrees_with_the_png_masks() {
    let root = fixtures().join("coco");
    let inst = CocoInstances::open(&root.join("annotations/instances_train2017.json")).unwrap();
    assert_eq!(inst.categories.len(), 80);
    assert_eq!(inst.images.len(), 6);
    let (mut union, mut agree) = (0u64, 0u64);
    for im in &inst.images {
        let png = root
            .join("masks/train2017")
            .join(im.file_name.replace(".jpg", ".png"));
        let gt = load_label_png(&png).unwrap();
        let ours = inst.class_mask(im.id, ClassMaskOptions::default()).unwrap();
        assert_eq!(
            (gt.height, gt.width),
            (ours.height, ours.width),
            "{}",
            im.file_name
        );
        for (&g, &o) in gt.data.iter().zip(&ours.data) {
            let g = if inst.is_category(g as u64) { g } else { 0 };
            if g != 0 || o != 0 {
                union += 1;
                agree += (g == o) as u64;
            }
        }
    }
    let agreement = agree as f64 / union as f64;
    eprintln!("COCO fixture JSON vs PNG: thing-pixel agreement {agreement:.5} ({agree}/{union})");
    // Measured 0.98520 (31,812 of 32,290 pixels): at 160 px the two resamplings (polygons scaled then
    // rasterised at pixel centres, masks nearest-downscaled) differ along object boundaries,
    // about one pixel wide; at full size the agreement is 0.99992 (coco_json tests).
    assert!(agreement >= 0.98, "{agreement}");
}

#[test]
fn pascal_fixture_reads_both_label_layouts() {
    let root = fixtures().join("voc2012");
    for labels in ["SegmentationClassAug", "SegmentationClass"] {
        for void in [VoidLabel::Ignore, VoidLabel::Background] {
            let opts = PascalOptions {
                list: "val".into(),
                labels: Some(labels.into()),
                void,
            };
            let ds = PascalDataset::open(&root, &opts).unwrap();
            assert_eq!(ds.len(), 5, "{labels}");
            assert!(ds.labels_dir().ends_with(labels));
            // Fold 2 (11..=15): dog (12) and person (15) in 3 val images each.
            assert_eq!(pascal_fold_classes(2).unwrap(), vec![11, 12, 13, 14, 15]);
            assert_eq!(ds.eligible_images(12, 1).len(), 3);
            assert_eq!(ds.eligible_images(15, 1).len(), 3);
            assert_eq!(ds.eligible_images(2, 1).len(), 1);
            for i in 0..ds.len() {
                let im = ds.image(i).unwrap();
                assert_eq!(
                    ds.load_image(i).unwrap().dimensions(),
                    (im.width, im.height)
                );
                // Every image has a boundary band.
                assert!(im.class_pixels[21] > 0, "{}", im.name);
                let m = ds.class_mask(i, 15).unwrap();
                let voids = m.data.iter().filter(|&&v| v == VOID).count() as u64;
                match void {
                    VoidLabel::Ignore => {
                        assert_eq!(ds.ignore_label(), Some(VOID));
                        assert_eq!(voids, im.class_pixels[21]);
                    }
                    VoidLabel::Background => {
                        assert_eq!(ds.ignore_label(), None);
                        assert_eq!(voids, 0);
                    }
                }
                assert_eq!(
                    m.data.iter().filter(|&&v| v == 1).count() as u64,
                    ds.pixels(i, 15)
                );
            }
        }
    }
    // Both label folders hold the same labels; train lists the other 3 images.
    let aug = PascalDataset::open(
        &root,
        &PascalOptions {
            labels: Some("SegmentationClassAug".into()),
            ..PascalOptions::val()
        },
    )
    .unwrap();
    let pal = PascalDataset::open(
        &root,
        &PascalOptions {
            labels: Some("SegmentationClass".into()),
            ..PascalOptions::val()
        },
    )
    .unwrap();
    for i in 0..aug.len() {
        assert_eq!(aug.label_map(i).unwrap(), pal.label_map(i).unwrap());
    }
    let train = PascalDataset::open(
        &root,
        &PascalOptions {
            list: "train".into(),
            ..PascalOptions::val()
        },
    )
    .unwrap();
    assert_eq!(train.len(), 3);
}

/// Features = the preprocessed input itself (3 channels, stride 1).
struct IdentityEncoder;

impl FeatureEncoder for IdentityEncoder {
    fn encode_batch(
        &mut self,
        inputs: &[Vec<f32>],
        size: InputSize,
    ) -> fss_core::Result<Vec<FeatureMap>> {
        inputs
            .iter()
            .map(|x| FeatureMap::new(3, size.height, size.width, x.clone()))
            .collect()
    }
}

fn scoring_input() -> ScoringInput {
    ScoringInput {
        size: InputSize::new(96, 96),
        normalization: Normalization::IMAGENET,
    }
}

fn pascal_request(folds: Option<Vec<usize>>) -> ProtocolRequest {
    ProtocolRequest {
        pascal: fss_lab::data::pascal::PascalOptions::val(),
        protocol: Protocol::Pascal,
        data: fixtures().join("voc2012"),
        shots: 1,
        episodes: Some(12),
        runs: 2,
        seed: 5,
        folds,
        trained_fold: None,
        write_episodes: None,
        episodes_file: None,
        preset: None,
        temporal: None,
    }
}

fn run_pascal(request: &ProtocolRequest) -> fss_core::Result<EvalReport> {
    let base = EvalReport::new(
        "",
        "voc",
        "panet",
        "identity",
        [32, 32],
        "fp32",
        request.shots,
    );
    run_protocol(
        &mut IdentityEncoder,
        scoring_input(),
        request,
        base,
        &mut |_, _| {},
    )
}

#[test]
fn pascal_protocol_on_the_voc_fixture() {
    let dir = std::env::temp_dir().join(format!("edge-fixtures-pascal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let eps = dir.join("eps.jsonl");
    let mut request = pascal_request(Some(vec![2]));
    request.write_episodes = Some(eps.clone());
    let report = run_pascal(&request).unwrap();
    assert_eq!(report.protocol, "pascal");
    assert_eq!(report.folds, Some(vec![2]));
    assert_eq!(
        (report.episodes, report.runs, report.seed),
        (Some(12), 2, 5)
    );
    let pf = report.per_fold.as_ref().unwrap();
    assert_eq!((pf.len(), pf[0].fold, pf[0].classes), (1, 2, 2));
    assert!(pf[0].miou.is_finite() && pf[0].miou_std >= 0.0);
    // Classes are keyed by VOC id with VOC names: fold 2's dog and person.
    let per_class = report.per_class.as_ref().unwrap();
    assert_eq!(per_class.keys().collect::<Vec<_>>(), ["12", "15"]);
    assert_eq!(
        (per_class["12"].name.as_str(), per_class["15"].name.as_str()),
        ("dog", "person")
    );
    let miou = report.miou.unwrap();
    assert!(
        (0.0..=100.0).contains(&miou) && report.fb_iou.is_some(),
        "{miou}"
    );

    // Episodes: 2 runs x 12, support and query distinct, same class, in the val list.
    let records = fss_lab::episodes::read_jsonl(&eps).unwrap();
    assert_eq!(records.len(), 24);
    for r in &records {
        assert!(r.class_id == 12 || r.class_id == 15, "{r:?}");
        assert_eq!(r.fold, 2);
        assert!(!r.supports.contains(&r.query), "{r:?}");
        assert!(r.query.starts_with("JPEGImages/"), "{r:?}");
    }
    // Seeded: the same request gives the same numbers; a replay of the list too.
    let again = run_pascal(&request).unwrap();
    assert_eq!(
        (again.miou, &again.per_class),
        (report.miou, &report.per_class)
    );
    request.write_episodes = None;
    request.episodes_file = Some(eps);
    let replayed = run_pascal(&request).unwrap();
    assert_eq!(replayed.per_class, report.per_class);
    let _ = std::fs::remove_dir_all(&dir);

    // Fold 0 has bicycle in one val image only: no 1-shot episode; fold 4 does not exist.
    let e = run_pascal(&pascal_request(Some(vec![0])))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fold 0") && e.contains("at least 2 images"),
        "{e}"
    );
    let e = run_pascal(&pascal_request(Some(vec![4])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fold 4"), "{e}");
    // A preset with a fixed input size needs the model at that size.
    let mut r = pascal_request(Some(vec![2]));
    r.preset = Some(Preset::Panet);
    let e = run_pascal(&r).unwrap_err().to_string();
    assert!(e.contains("417x417") && e.contains("96x96"), "{e}");
}

/// Every preset end to end on a real-image fixture: the preset's settings in the report, and
/// the same preset and seed give byte-identical episode lists and results (timing excluded).
fn every_preset_runs(protocol: Protocol, data: &Path, folds: Vec<usize>, tag: &str) {
    let benchmark = match protocol {
        Protocol::Pascal => Benchmark::Pascal,
        _ => Benchmark::Coco,
    };
    let dir = std::env::temp_dir().join(format!("edge-fixtures-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for &(preset, _, _) in Preset::VARIANTS {
        let h = preset.settings().harness(benchmark);
        let input = ScoringInput {
            // Any size for `oslsm` (each image at its own); the preset's otherwise.
            size: h.size().unwrap_or(InputSize::new(16, 16)),
            normalization: Normalization::IMAGENET,
        };
        let run = |k: usize| {
            let eps = dir.join(format!("{}-{k}.jsonl", preset.name()));
            let request = ProtocolRequest {
                pascal: PascalOptions::val(),
                protocol,
                data: data.to_path_buf(),
                shots: 1,
                episodes: Some(4),
                runs: 9,
                seed: 77,
                folds: Some(folds.clone()),
                trained_fold: None,
                write_episodes: Some(eps.clone()),
                episodes_file: None,
                preset: Some(preset),
                temporal: None,
            };
            let base = EvalReport::new("", "fixture", "panet", "identity", [1, 1], "fp32", 1);
            let report = run_protocol(&mut IdentityEncoder, input, &request, base, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name()));
            (report, std::fs::read(&eps).unwrap())
        };
        let (report, episodes) = run(0);
        let name = preset.name();
        assert_eq!(
            report.protocol,
            format!("{}-{name}", protocol.name()),
            "{name}"
        );
        // The preset's seeds and runs, not the request's; the shorter episode count given.
        assert_eq!(
            (report.seed, report.runs, report.episodes),
            (h.seed, h.runs, Some(4)),
            "{name}"
        );
        let size = h.size().map(|s| [s.height, s.width]).unwrap_or([0, 0]);
        assert_eq!(report.size, size, "{name}");
        let pf = report.per_fold.as_ref().unwrap();
        assert_eq!(pf.len(), folds.len(), "{name}");
        assert!(
            pf.iter().all(|f| f.classes > 0 && f.fb_iou.is_some()),
            "{name}"
        );
        let miou = report.miou.unwrap();
        assert!((0.0..=100.0).contains(&miou), "{name}: {miou}");
        let records = fss_lab::episodes::read_jsonl(&dir.join(format!("{name}-0.jsonl"))).unwrap();
        assert_eq!(records.len(), 4 * folds.len() * h.runs, "{name}");
        let (again, episodes_again) = run(1);
        assert_eq!(episodes, episodes_again, "{name}: episode lists differ");
        assert_eq!(
            report.comparable_json(),
            again.comparable_json(),
            "{name}: results differ"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_preset_runs_on_the_voc_fixture() {
    every_preset_runs(
        Protocol::Pascal,
        &fixtures().join("voc2012"),
        vec![2],
        "voc-presets",
    );
}

/// Every preset on a COCO128-layout set with objects large enough for the 2,048 px and OSLSM
/// grid rules (synthetic scenes, 160 px: the real-image COCO fixture is too small for them,
/// see the next test).
#[test]
fn every_preset_runs_on_a_coco_layout() {
    let dir =
        std::env::temp_dir().join(format!("edge-fixtures-coco-layout-{}", std::process::id()));
    fss_tests::write_coco_like(&dir, 12, 8, 160);
    every_preset_runs(Protocol::Coco, &dir, vec![0], "coco-presets");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On the real-image COCO fixture (160 px images) `panet` runs; the presets with a small-object
/// rule find no class large enough and say so in one line.
#[test]
fn presets_on_the_coco_fixture_run_or_say_why_not() {
    for &(preset, _, _) in Preset::VARIANTS {
        let h = preset.settings().harness(Benchmark::Coco);
        let input = ScoringInput {
            size: h.size().unwrap_or(InputSize::new(16, 16)),
            normalization: Normalization::IMAGENET,
        };
        let request = ProtocolRequest {
            protocol: Protocol::Coco,
            data: fixtures().join("coco"),
            preset: Some(preset),
            temporal: None,
            folds: Some(vec![0]),
            episodes: Some(3),
            ..pascal_request(None)
        };
        let base = EvalReport::new("", "coco", "panet", "identity", [1, 1], "fp32", 1);
        let r = run_protocol(&mut IdentityEncoder, input, &request, base, &mut |_, _| {});
        match preset {
            Preset::Panet => assert_eq!(r.unwrap().per_fold.unwrap()[0].classes, 3),
            _ => {
                let e = r.unwrap_err().to_string();
                let rule = if preset == Preset::Oslsm {
                    ">= 3 OSLSM grid cells"
                } else {
                    ">= 2048 px"
                };
                assert!(
                    e.contains("fold 0") && e.contains(rule) && !e.contains('\n'),
                    "{e}"
                );
            }
        }
    }
}

/// Records the input size of every encoder call.
struct RecordingEncoder(Vec<InputSize>);

impl FeatureEncoder for RecordingEncoder {
    fn encode_batch(
        &mut self,
        inputs: &[Vec<f32>],
        size: InputSize,
    ) -> fss_core::Result<Vec<FeatureMap>> {
        self.0.push(size);
        IdentityEncoder.encode_batch(inputs, size)
    }
}

/// `oslsm` encodes each image at its own size, once, grouped by size (one plan per size for
/// backends that pin one); `pfenet` encodes every image on its 473 x 473 canvas.
#[test]
fn oslsm_encodes_each_image_at_its_own_size_once() {
    let root = fixtures().join("voc2012");
    let ds = PascalDataset::open(&root, &PascalOptions::val()).unwrap();
    let sizes: std::collections::BTreeSet<(usize, usize)> = ds
        .images()
        .iter()
        .map(|im| (im.height as usize, im.width as usize))
        .collect();
    assert!(sizes.len() > 1, "the fixture has images of several sizes");
    for (preset, want) in [
        (Preset::Oslsm, None),
        (Preset::Pfenet, Some(InputSize::new(473, 473))),
    ] {
        let mut enc = RecordingEncoder(Vec::new());
        let request = ProtocolRequest {
            preset: Some(preset),
            temporal: None,
            episodes: Some(20),
            ..pascal_request(Some(vec![2]))
        };
        let input = ScoringInput {
            size: want.unwrap_or(InputSize::new(16, 16)),
            ..scoring_input()
        };
        let base = EvalReport::new("", "voc", "panet", "identity", [1, 1], "fp32", 1);
        run_protocol(&mut enc, input, &request, base, &mut |_, _| {}).unwrap();
        let calls = enc.0;
        // One call per image (batch size 1), never the same image twice: at most the list.
        assert!(!calls.is_empty() && calls.len() <= ds.len(), "{calls:?}");
        match want {
            Some(canvas) => assert!(calls.iter().all(|&s| s == canvas), "{calls:?}"),
            None => {
                for s in &calls {
                    assert!(
                        sizes.contains(&(s.height, s.width)),
                        "{s} is no image's size"
                    );
                }
                // Grouped: once the encoder leaves a size it never comes back to it.
                let mut runs = calls.clone();
                runs.dedup();
                let distinct: std::collections::BTreeSet<_> =
                    runs.iter().map(|s| (s.height, s.width)).collect();
                assert_eq!(runs.len(), distinct.len(), "{calls:?}");
            }
        }
    }
}

/// 255 ignored: the void pixels of the queries are not counted; as background they are.
#[test]
fn pascal_protocol_void_handling() {
    let root = fixtures().join("voc2012");
    let sampling = Sampling {
        shots: 1,
        episodes: 10,
        runs: 1,
        seed: 0,
        folds: vec![2],
        rule: Eligibility::min_pixels(PASCAL_MIN_PIXELS),
    };
    let mut counted = Vec::new();
    for void in [VoidLabel::Ignore, VoidLabel::Background] {
        let ds = PascalDataset::open(
            &root,
            &PascalOptions {
                void,
                ..PascalOptions::val()
            },
        )
        .unwrap();
        let plan = plan_episodes(&ds, &sampling, None).unwrap();
        let r = score_episodes(
            &mut IdentityEncoder,
            &ds,
            Scoring::canonical(scoring_input()),
            plan,
            &mut |_, _| {},
        )
        .unwrap();
        let (fg, bg) = r.runs[&(2, 0)].pooled();
        let (mut pixels, mut voids) = (0u64, 0u64);
        for rec in &r.episodes {
            let q = ds.episode(rec).unwrap().query;
            let im = ds.image(q).unwrap();
            pixels += (im.width * im.height) as u64;
            voids += im.class_pixels[21];
        }
        // Every pixel is in exactly one of: fg union, bg intersection.
        let want = match void {
            VoidLabel::Ignore => pixels - voids,
            VoidLabel::Background => pixels,
        };
        assert_eq!(fg.union + bg.intersection, want, "{void:?}");
        counted.push(r.episodes);
    }
    // The void handling does not change the draw.
    assert_eq!(counted[0], counted[1]);
}

/// `edge eval --protocol pascal` on a test bundle (under aarch64 emulation too: the binary is
/// spawned through the test's qemu runner).
#[test]
fn edge_eval_pascal_on_the_voc_fixture() {
    let dir = std::env::temp_dir().join(format!("edge-fixtures-cli-{}", std::process::id()));
    let bundle = dir.join("bundle");
    write_test_bundle(&bundle, 32, 32);
    let out = common::edge_cmd()
        .args([
            "eval",
            "--protocol",
            "pascal",
            "--folds",
            "2",
            "--episodes",
            "6",
            "--size",
            "96x96",
            "--json",
            "--bundle",
        ])
        .arg(&bundle)
        .arg("--data")
        .arg(fixtures().join("voc2012"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["protocol"], "pascal");
    assert_eq!(v["folds"], serde_json::json!([2]));
    assert_eq!(v["per_fold"][0]["classes"], 2);
    assert!(v["miou"].as_f64().is_some(), "{v}");
    for (id, entry) in v["per_class"].as_object().unwrap() {
        assert!(["12", "15"].contains(&id.as_str()), "{id}");
        assert!(
            entry["name"] == "dog" || entry["name"] == "person",
            "{entry}"
        );
    }
}

/// Copies a fixture folder so a test can break it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn pascal_check_is_clean_on_the_fixture_and_reports_each_problem() {
    let voc = fixtures().join("voc2012");
    assert_no_problems(&voc, DataFormat::Pascal);

    let tmp = fss_tests::TempDir::new("pascal-check");
    let root = tmp.path().join("voc");
    copy_dir(&voc, &root);
    let names: Vec<String> = std::fs::read_to_string(root.join("ImageSets/Segmentation/val.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // A missing image, a label with a value VOC does not use, a label of another size.
    std::fs::remove_file(root.join(format!("JPEGImages/{}.jpg", names[0]))).unwrap();
    let bad_values = image::GrayImage::from_fn(4, 4, |_, _| image::Luma([77u8]));
    let (w, h) =
        image::image_dimensions(root.join(format!("JPEGImages/{}.jpg", names[1]))).unwrap();
    let mut wrong = image::GrayImage::from_fn(w, h, |_, _| image::Luma([0u8]));
    wrong.put_pixel(0, 0, image::Luma([77]));
    wrong
        .save(root.join(format!("SegmentationClassAug/{}.png", names[1])))
        .unwrap();
    bad_values
        .save(root.join(format!("SegmentationClassAug/{}.png", names[2])))
        .unwrap();
    let report = check_dataset(&root, DataFormat::Pascal);
    let text: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
    assert_eq!(report.problems.len(), 4, "{text:#?}");
    assert!(
        text.iter()
            .any(|m| m.contains(&names[0]) && m.contains("missing")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|m| m.contains(&names[1]) && m.contains("77")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|m| m.contains(&names[2]) && m.contains("another size")
                || m.contains(&names[2]) && m.contains("4x4")),
        "{text:#?}"
    );
}
