//! `host data check`: every problem on its own line, a summary, exit status 1 if any.

use fss_tests::{write_coco_like, write_davis_like, write_folder_like, TempDir};
use std::process::{Command, Output};

fn check(path: &std::path::Path, format: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["data", "check"])
        .arg(path)
        .args(["--format", format])
        .output()
        .expect("host runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn clean_datasets_pass() {
    let dir = TempDir::new("dcheck_clean");
    let (c, d, f) = (
        dir.path().join("coco"),
        dir.path().join("davis"),
        dir.path().join("folder"),
    );
    write_coco_like(&c, 3, 2, 32);
    write_davis_like(&d, 2, 3, 32, 24);
    write_folder_like(&f, &[("cat", 2), ("dog", 3)], 32);
    for (p, fmt, images) in [(&c, "coco", 5), (&d, "davis", 6), (&f, "folder", 5)] {
        let out = check(p, fmt);
        let text = stdout(&out);
        assert!(out.status.success(), "{fmt}: {text} {:?}", out.stderr);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(&format!("{images} images")) && text.contains("0 problems"),
            "{text}"
        );
    }
}

#[test]
fn broken_folder_lists_every_problem() {
    let dir = TempDir::new("dcheck_broken");
    let f = dir.path();
    write_folder_like(f, &[("cat", 3), ("dog", 2)], 32);
    std::fs::remove_file(f.join("cat/masks/img00.png")).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([255]))
        .save(f.join("cat/masks/img01.png"))
        .unwrap();
    image::GrayImage::new(32, 32)
        .save(f.join("dog/masks/img01.png"))
        .unwrap();
    std::fs::write(f.join("dog/images/img00.jpg"), b"not a jpeg").unwrap();
    let out = check(f, "folder");
    let text = stdout(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[..4]
        .iter()
        .any(|l| l.contains("img00.jpg") && l.contains("no mask")));
    assert!(lines[..4]
        .iter()
        .any(|l| l.contains("cat/masks/img01.png") && l.contains("8x8")));
    assert!(lines[..4]
        .iter()
        .any(|l| l.contains("dog/masks/img01.png") && l.contains("empty")));
    assert!(lines[..4]
        .iter()
        .any(|l| l.contains("dog/images/img00.jpg")));
    assert!(lines[4].contains("4 problems"), "{text}");
    assert!(
        stderr.starts_with("error:") && stderr.contains("4 problems"),
        "{stderr}"
    );
}

#[test]
fn broken_davis_and_coco_are_reported() {
    let dir = TempDir::new("dcheck_broken2");
    let d = dir.path().join("davis");
    write_davis_like(&d, 2, 3, 32, 24);
    std::fs::remove_file(d.join("Annotations/480p/seq1/00002.png")).unwrap();
    image::GrayImage::new(32, 24)
        .save(d.join("Annotations/480p/seq0/00000.png"))
        .unwrap();
    let out = check(&d, "davis");
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("seq1/00002.jpg") && text.contains("no annotation"),
        "{text}"
    );
    assert!(
        text.contains("seq0/00000.png") && text.contains("empty"),
        "{text}"
    );
    assert!(text.contains("2 problems"), "{text}");

    let c = dir.path().join("coco");
    write_coco_like(&c, 2, 1, 32);
    image::GrayImage::from_pixel(32, 32, image::Luma([250]))
        .save(c.join("masks/train2017/000000000100.png"))
        .unwrap();
    let out = check(&c, "coco");
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("000000000100.png") && text.contains("250"),
        "{text}"
    );

    let out = check(&dir.path().join("missing"), "coco");
    assert!(!out.status.success());
    assert!(stdout(&out).contains("does not exist"));
}
