//! `host train` on video (a DAVIS-layout set: K support frames and a query frame of one
//! sequence) and on several sources mixed by weight: the mixed run resumes to the same curve,
//! both sources are drawn, and bad data or weights are one-line errors.

use std::path::Path;

use fss_tests::{assert_clean_error, write_coco_like, TempDir};

mod common;
use common::{host, losses, repo_root, run_record};

/// The DAVIS fixture (one sequence, five frames, a mask on each).
fn davis_fixture() -> String {
    repo_root()
        .join("tests/fixtures/datasets/davis")
        .display()
        .to_string()
}

fn train<'a>(out: &'a str, iterations: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--method",
        "panet",
        "--backbone",
        "mobilenetv2",
        "--out",
        out,
        "--iterations",
        iterations,
        "--size",
        "64x64",
        "--min-pixels",
        "200",
        "--seed",
        "11",
    ];
    v.extend_from_slice(extra);
    v
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mixed_video_and_class_training_resumes_the_same_curve() {
    let coco = TempDir::new("mix-coco");
    write_coco_like(coco.path(), 12, 4, 96);
    let davis = davis_fixture();
    let c = coco.path().to_str().unwrap();
    let runs = TempDir::new("mix-runs");
    let (a, b) = (runs.path().join("straight"), runs.path().join("stopped"));
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let data = [
        "--data",
        davis.as_str(),
        "--data",
        c,
        "--data-weights",
        "0.5,0.5",
        "--checkpoint-every",
        "2",
    ];
    ok(&host(&train(sa, "8", &data)));
    let mut stopped = data.to_vec();
    stopped.extend(["--stop-after", "5"]);
    ok(&host(&train(sb, "8", &stopped)));
    let mut resumed = data.to_vec();
    resumed.push("--resume");
    ok(&host(&train(sb, "8", &resumed)));
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 8);
    // The same episodes, weights and momentum from the checkpoint: the same computation.
    assert_eq!(la, lb, "the resumed curve differs");
    let r = run_record(&a);
    let (class, video) = (
        r["sampler"]["drawn"].as_u64().unwrap(),
        r["video"]["drawn"].as_u64().unwrap(),
    );
    assert_eq!(class + video, 8);
    assert!(class > 0 && video > 0, "class {class}, video {video}");
    let sources = r["config"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["layout"], "davis");
    assert_eq!(sources[1]["layout"], "coco128");
    // Augmented by default, and the resumed run augmented the same images the same way.
    assert_eq!(
        r["config"]["augment"]["scale"],
        serde_json::json!([0.8, 1.25])
    );
}

#[test]
fn augmentation_changes_the_images_not_the_episodes_and_can_be_turned_off() {
    let davis = davis_fixture();
    let runs = TempDir::new("aug-runs");
    let (a, b) = (runs.path().join("standard"), runs.path().join("none"));
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    ok(&host(&train(sa, "3", &["--data", davis.as_str()])));
    ok(&host(&train(
        sb,
        "3",
        &["--data", davis.as_str(), "--augment", "none"],
    )));
    let (ra, rb) = (run_record(&a), run_record(&b));
    assert!(rb["config"].get("augment").is_none(), "{}", rb["config"]);
    // The same episodes were drawn (the augmentation has its own stream)...
    assert_eq!(ra["video"], rb["video"]);
    // ...and the first step, from the same initial weights, saw other pixels.
    let (la, lb) = (losses(&a), losses(&b));
    assert_ne!(la[0], lb[0], "augmentation changed nothing");
    let bad = host(&train(
        sb,
        "3",
        &["--data", davis.as_str(), "--augment", "heavy"],
    ));
    assert_clean_error(&bad, &["--augment", "heavy"]);
}

#[test]
fn video_only_training_runs_and_bad_inputs_are_one_line_errors() {
    let runs = TempDir::new("video-runs");
    let out = runs.path().join("video");
    let davis = davis_fixture();
    ok(&host(&train(
        out.to_str().unwrap(),
        "2",
        &["--data", davis.as_str()],
    )));
    let r = run_record(&out);
    assert!(
        r.get("sampler").is_none() && r["video"]["drawn"] == 2,
        "{r}"
    );
    assert_eq!(losses(&out).len(), 2);

    let never = runs.path().join("never");
    let n = never.to_str().unwrap();
    let empty = TempDir::new("video-empty");
    let e = empty.path().to_str().unwrap();
    assert_clean_error(
        &host(&train(n, "1", &["--data", e])),
        &[e, "no known training layout"],
    );
    let coco = TempDir::new("video-coco");
    write_coco_like(coco.path(), 12, 4, 96);
    let c = coco.path().to_str().unwrap();
    let two = ["--data", davis.as_str(), "--data", c];
    for (weights, needle) in [
        ("-1,2", "not a finite non-negative number"),
        ("0,0", "all zero"),
        ("1", "1 weights for 2 --data folders"),
    ] {
        let flag = format!("--data-weights={weights}");
        let mut args = two.to_vec();
        args.push(&flag);
        assert_clean_error(&host(&train(n, "1", &args)), &[needle]);
    }
    assert_clean_error(
        &host(&train(
            n,
            "1",
            &["--data", davis.as_str(), "--holdout-sequences", "zz"],
        )),
        &["\"zz\""],
    );
    // A damaged mask in a training sequence names the file.
    let bad = TempDir::new("video-bad");
    let src = Path::new(&davis);
    for sub in ["JPEGImages/480p/cows", "Annotations/480p/cows"] {
        std::fs::create_dir_all(bad.path().join(sub)).unwrap();
        for f in std::fs::read_dir(src.join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, bad.path().join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(src.join("sequences.txt"), bad.path().join("sequences.txt")).unwrap();
    let mask = bad.path().join("Annotations/480p/cows/00002.png");
    std::fs::write(&mask, b"not a png").unwrap();
    assert_clean_error(
        &host(&train(n, "1", &["--data", bad.path().to_str().unwrap()])),
        &["00002.png"],
    );
    assert!(!never.join("run.json").exists());
}

#[test]
fn a_batch_of_episodes_per_step_resumes_the_same_curve() {
    let davis = davis_fixture();
    let runs = TempDir::new("batch-runs");
    let (a, b) = (runs.path().join("straight"), runs.path().join("stopped"));
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let data = [
        "--data",
        davis.as_str(),
        "--batch",
        "2",
        "--checkpoint-every",
        "2",
    ];
    ok(&host(&train(sa, "4", &data)));
    let mut stopped = data.to_vec();
    stopped.extend(["--stop-after", "3"]);
    ok(&host(&train(sb, "4", &stopped)));
    let mut resumed = data.to_vec();
    resumed.push("--resume");
    ok(&host(&train(sb, "4", &resumed)));
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 4, "one loss point per step");
    assert_eq!(la, lb, "the resumed curve differs");
    let r = run_record(&a);
    assert_eq!(r["config"]["batch"], 2);
    assert_eq!(r["video"]["drawn"], 8, "two episodes per step");
    let bad = host(&train(sb, "4", &["--data", davis.as_str(), "--batch", "0"]));
    assert_clean_error(&bad, &["--batch", "0"]);
}

/// SMCP trains on video and class episodes mixed: a video episode has no class labels, so its
/// multi-class term is exactly 0 while a class episode's is positive.
#[test]
fn smcp_trains_on_video_and_class_episodes_mixed() {
    let davis = davis_fixture();
    let coco = TempDir::new("smcp-video-coco");
    write_coco_like(coco.path(), 12, 4, 96);
    let runs = TempDir::new("smcp-video-runs");
    let out = runs.path().join("smcp");
    let mut args = train(
        out.to_str().unwrap(),
        "6",
        &[
            "--data",
            davis.as_str(),
            "--data",
            coco.path().to_str().unwrap(),
            "--head-width",
            "16",
        ],
    );
    args[2] = "smcp";
    ok(&host(&args));
    let history = run_record(&out)["history"].as_array().unwrap().clone();
    let multi: Vec<f64> = history
        .iter()
        .map(|p| p["multi_class"].as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(multi.len(), 6);
    assert!(multi.contains(&0.0), "no video episode: {multi:?}");
    assert!(
        multi.iter().any(|&m| m > 0.1),
        "no class episode: {multi:?}"
    );
    assert!(history
        .iter()
        .all(|p| p["loss"].as_f64().unwrap().is_finite()));
}
