//! `host train` on every class dataset a user may have: COCO as distributed (instances JSON),
//! PASCAL VOC with SBD labels, and class folders, next to COCO128; each trains a few iterations
//! on a fixture laid out like the real thing, and bad data is a one-line error naming the file.

use std::path::Path;

use fss_tests::{
    assert_clean_error, write_coco_distributed, write_coco_like, write_folder_like,
    write_pascal_like, TempDir,
};

mod common;
use common::{host, losses, run_record};

fn train<'a>(method: &'a str, data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--method",
        method,
        "--backbone",
        "mobilenetv2",
        "--data",
        data,
        "--out",
        out,
        "--iterations",
        "3",
        "--size",
        "64x64",
        "--min-pixels",
        "200",
        "--seed",
        "5",
    ];
    v.extend_from_slice(extra);
    v
}

fn trained(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The same images and labels as COCO128 PNGs and as an instances JSON train the same curve and
/// evaluate to the same COCO-20i report.
#[test]
fn coco_as_distributed_trains_and_evaluates_as_the_same_data_in_png_masks() {
    let data = TempDir::new("train-coco-json");
    let (png, json) = (data.path().join("png"), data.path().join("json"));
    // 160 px: the objects pass the evaluation's 2,048-pixel rule.
    write_coco_like(&png, 12, 4, 160);
    write_coco_distributed(&json, 12, 4, 160);
    let runs = TempDir::new("train-coco-json-runs");
    let (a, b) = (runs.path().join("png"), runs.path().join("json"));
    let log = trained(&host(&train(
        "panet",
        json.to_str().unwrap(),
        b.to_str().unwrap(),
        &[],
    )));
    assert!(log.contains("12 train2017 images"), "{log}");
    trained(&host(&train(
        "panet",
        png.to_str().unwrap(),
        a.to_str().unwrap(),
        &[],
    )));
    assert_eq!(run_record(&b)["config"]["sources"][0]["layout"], "coco");
    assert_eq!(run_record(&a)["config"]["sources"][0]["layout"], "coco128");
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 3);
    assert_eq!(la, lb);
    let eval = |data: &Path| -> serde_json::Value {
        let out = host(&[
            "eval",
            "--checkpoint",
            b.to_str().unwrap(),
            "--protocol",
            "coco",
            "--data",
            data.to_str().unwrap(),
            "--folds",
            "0",
            "--episodes",
            "6",
            "--size",
            "64x64",
            "--json",
        ]);
        trained(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (ra, rb) = (eval(&png), eval(&json));
    assert!(rb["miou"].as_f64().unwrap() > 0.0, "{rb}");
    assert_eq!(ra["miou"], rb["miou"]);
    assert_eq!(ra["per_class"], rb["per_class"]);
}

/// PASCAL VOC trains on the base classes of its PASCAL-5i fold from the train list, void
/// ignored; SMCP's multi-class head gets the 15 base classes and background.
#[test]
fn pascal_voc_trains_on_the_base_classes_of_its_fold() {
    let data = TempDir::new("train-pascal");
    write_pascal_like(data.path(), 12, 96);
    let d = data.path().to_str().unwrap();
    let runs = TempDir::new("train-pascal-runs");
    let panet = runs.path().join("panet");
    let log = trained(&host(&train("panet", d, panet.to_str().unwrap(), &[])));
    // VOC ids 6, 7, 8 are base classes of fold 0 (1 is novel); 6 images in the train list.
    assert!(
        log.contains("3 base classes of PASCAL-5i fold 0 (6 images of the train list)"),
        "{log}"
    );
    assert_eq!(
        run_record(&panet)["config"]["sources"][0]["layout"],
        "pascal"
    );
    assert!(losses(&panet).iter().all(|l| l.is_finite() && *l > 0.0));
    // The fold decides: in fold 1 (novel 6..=10) only VOC id 1 trains, in fold 2 (novel
    // 11..=15) all four classes of the fixture do.
    for (fold, classes) in [("1", 1), ("2", 4)] {
        let out = runs.path().join(format!("fold{fold}"));
        let log = trained(&host(&train(
            "panet",
            d,
            out.to_str().unwrap(),
            &["--fold", fold],
        )));
        let want = format!("{classes} base classes of PASCAL-5i fold {fold}");
        assert!(log.contains(&want), "{log}");
    }
    assert_clean_error(
        &host(&train(
            "panet",
            d,
            runs.path().join("f9").to_str().unwrap(),
            &["--fold", "9"],
        )),
        &["fold 9"],
    );
    let smcp = runs.path().join("smcp");
    trained(&host(&train(
        "smcp",
        d,
        smcp.to_str().unwrap(),
        &["--head-width", "16"],
    )));
    assert_eq!(run_record(&smcp)["config"]["smcp"]["classes"], 16);
}

/// A folder dataset is the user's own data: every class trains.
#[test]
fn class_folders_train_on_every_class() {
    let data = TempDir::new("train-folder");
    write_folder_like(data.path(), &[("cup", 4), ("shoe", 4), ("toy", 1)], 96);
    let runs = TempDir::new("train-folder-runs");
    let out = runs.path().join("panet");
    let log = trained(&host(&train(
        "panet",
        data.path().to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    )));
    // `toy` has one image: no 1-shot episode, so two classes take part.
    assert!(log.contains("2 class folders (9 images)"), "{log}");
    assert_eq!(run_record(&out)["config"]["sources"][0]["layout"], "folder");
    assert_eq!(losses(&out).len(), 3);
}

#[test]
fn bad_class_datasets_are_one_line_errors_naming_the_file() {
    let runs = TempDir::new("train-bad-runs");
    let out = runs.path().join("never");
    let o = out.to_str().unwrap();
    // A PASCAL list naming a missing image.
    let pascal = TempDir::new("train-bad-pascal");
    write_pascal_like(pascal.path(), 6, 48);
    let gone = pascal.path().join("JPEGImages/2010_000002.jpg");
    std::fs::remove_file(&gone).unwrap();
    assert_clean_error(
        &host(&train("panet", pascal.path().to_str().unwrap(), o, &[])),
        &["2010_000002"],
    );
    // COCO as distributed with an image of the JSON missing.
    let coco = TempDir::new("train-bad-coco");
    write_coco_distributed(coco.path(), 4, 1, 48);
    std::fs::remove_file(coco.path().join("train2017/000000000101.jpg")).unwrap();
    assert_clean_error(
        &host(&train("panet", coco.path().to_str().unwrap(), o, &[])),
        &["000000000101.jpg", "missing"],
    );
    // Two class datasets in one run.
    let folder = TempDir::new("train-bad-folder");
    write_folder_like(folder.path(), &[("cup", 3)], 48);
    let f = folder.path().to_str().unwrap();
    let args = train("panet", pascal.path().to_str().unwrap(), o, &["--data", f]);
    assert_clean_error(&host(&args), &[f, "a second class-episode source"]);
    // A folder whose class has an image without its mask.
    std::fs::remove_file(folder.path().join("cup/masks/img01.png")).unwrap();
    assert_clean_error(&host(&train("panet", f, o, &[])), &["img01"]);
}
