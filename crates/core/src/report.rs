//! The one JSON output schema of docs/evaluation.md ("Output") for `host eval`, `edge eval`
//! ([`EvalReport`]) and `edge bench` ([`BenchReport`]).
//!
//! Snake_case keys, metrics in percent at full `f64` precision (no rounding). Every key of
//! [`EvalReport`] is always present, absent values are `null`. In [`BenchReport`], stages and
//! sections that did not run are omitted. One report is one line ([`EvalReport::to_json_line`]).
//! Comparisons of results ("byte-identical") exclude `timing`: see
//! [`EvalReport::comparable_json`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One entry of `per_class`, keyed by the COCO category id as a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEntry {
    pub name: String,
    /// Pooled class IoU in percent.
    pub iou: f64,
}

/// One entry of `per_fold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldEntry {
    pub fold: usize,
    /// Mean over runs of the fold's mIoU, percent.
    pub miou: f64,
    /// Population standard deviation over runs, percent.
    pub miou_std: f64,
    /// Number of taking-part classes.
    pub classes: usize,
    /// Mean over runs of the fold's FB-IoU, percent.
    #[serde(default)]
    pub fb_iou: Option<f64>,
    /// Population standard deviation over runs of the FB-IoU, percent.
    #[serde(default)]
    pub fb_iou_std: Option<f64>,
}

/// Wall-clock timing (excluded from result comparisons).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Timing {
    pub elapsed_s: f64,
}

/// Output of `host eval` / `edge eval` (evaluation.md "Output"). Field order is the key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `davis` or `coco` (or a preset name).
    pub protocol: String,
    /// Dataset path or name.
    pub data: String,
    /// e.g. `panet`.
    pub method: String,
    /// e.g. `mobilenetv2`, `efficientnet_lite0`.
    pub backbone: String,
    /// `[height, width]`.
    pub size: [usize; 2],
    /// e.g. `fp32`.
    pub precision: String,
    pub shots: usize,
    pub folds: Option<Vec<usize>>,
    /// Episodes per fold per run.
    pub episodes: Option<usize>,
    pub runs: usize,
    /// First seed (runs use `seed..seed + runs`).
    pub seed: u64,
    pub j_mean: Option<f64>,
    pub fb_iou: Option<f64>,
    pub miou: Option<f64>,
    pub per_sequence: Option<BTreeMap<String, f64>>,
    pub per_class: Option<BTreeMap<String, ClassEntry>>,
    pub per_fold: Option<Vec<FoldEntry>>,
    /// DAVIS with temporal memory (`--temporal`): its settings and what it did; `null` for
    /// the per-frame protocol.
    #[serde(default)]
    pub temporal: Option<TemporalReport>,
    pub timing: Timing,
}

/// The temporal memory of a DAVIS evaluation: its settings and its events summed over every
/// query frame (`crate::temporal`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemporalReport {
    pub options: crate::temporal::TemporalOptions,
    pub events: crate::temporal::TemporalCounts,
}

impl EvalReport {
    /// A report with the identification fields set and every metric `null`.
    pub fn new(
        protocol: impl Into<String>,
        data: impl Into<String>,
        method: impl Into<String>,
        backbone: impl Into<String>,
        size: [usize; 2],
        precision: impl Into<String>,
        shots: usize,
    ) -> Self {
        EvalReport {
            protocol: protocol.into(),
            data: data.into(),
            method: method.into(),
            backbone: backbone.into(),
            size,
            precision: precision.into(),
            shots,
            folds: None,
            episodes: None,
            runs: 1,
            seed: 0,
            j_mean: None,
            fb_iou: None,
            miou: None,
            per_sequence: None,
            per_class: None,
            per_fold: None,
            temporal: None,
            timing: Timing::default(),
        }
    }

    /// The report as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("EvalReport serializes")
    }

    /// A short human-readable summary (what the evaluation commands print without `--json`).
    pub fn human_summary(&self) -> String {
        let fmt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        let mut out = format!(
            "{} {} {} {} {}x{} {}-shot: J-mean {} FB-IoU {} mIoU {} ({:.1}s)",
            self.protocol,
            self.method,
            self.backbone,
            self.precision,
            self.size[0],
            self.size[1],
            self.shots,
            fmt(self.j_mean),
            fmt(self.fb_iou),
            fmt(self.miou),
            self.timing.elapsed_s
        );
        for (name, j) in self.per_sequence.iter().flatten() {
            out.push_str(&format!("\n  {name:<24} J {j:.1}"));
        }
        for f in self.per_fold.iter().flatten() {
            out.push_str(&format!(
                "\n  fold {} mIoU {:.1} ± {:.1} ({} classes)",
                f.fold, f.miou, f.miou_std, f.classes
            ));
        }
        if let Some(t) = &self.temporal {
            out.push_str(&format!(
                "\n  temporal memory: window {}, confidence {}, max area change {}; \
                 {} frames remembered, {} uncertain, {} fallbacks to the support",
                t.options.window,
                t.options.confidence,
                t.options.max_area_change,
                t.events.remembered,
                t.events.uncertain,
                t.events.fallbacks
            ));
        }
        out
    }

    /// The results as a Markdown table (what `--markdown FILE` writes): a title line naming the
    /// protocol, model, size, shots, episodes and seeds, then per fold the taking-part classes,
    /// pooled mIoU and FB-IoU as mean ± population std over the runs, and a mean row; DAVIS
    /// reports get per-sequence J and a J-mean / FB-IoU row instead.
    pub fn markdown_table(&self) -> String {
        let num = |v: Option<f64>| match v {
            Some(x) if x.is_finite() => format!("{x:.2}"),
            _ => "–".into(),
        };
        let pm = |m: Option<f64>, s: Option<f64>| match (m, s) {
            (Some(m), Some(s)) if m.is_finite() => format!("{m:.2} ± {s:.2}"),
            _ => num(m),
        };
        let size = if self.size == [0, 0] {
            "original size".to_string()
        } else {
            format!("{}x{}", self.size[0], self.size[1])
        };
        let seeds = if self.runs > 1 {
            format!("seeds {}..{}", self.seed, self.seed + self.runs as u64 - 1)
        } else {
            format!("seed {}", self.seed)
        };
        let episodes = self
            .episodes
            .map(|e| format!(", {e} episodes per fold and run"))
            .unwrap_or_default();
        let mut out = format!(
            "**{}** on `{}`: {} {} ({}), {size}, {}-shot{episodes}, {seeds}\n\n",
            self.protocol, self.data, self.method, self.backbone, self.precision, self.shots
        );
        match &self.per_fold {
            Some(folds) => {
                out.push_str(&format!(
                    "| fold | classes | mIoU (mean ± std over {} run{}) | FB-IoU (mean ± std) |\n|---|---|---|---|\n",
                    self.runs,
                    if self.runs == 1 { "" } else { "s" }
                ));
                for f in folds {
                    out.push_str(&format!(
                        "| {} | {} | {} | {} |\n",
                        f.fold,
                        f.classes,
                        pm(Some(f.miou), Some(f.miou_std)),
                        pm(f.fb_iou, f.fb_iou_std)
                    ));
                }
                out.push_str(&format!(
                    "| mean | | {} | {} |\n",
                    num(self.miou),
                    num(self.fb_iou)
                ));
            }
            None => {
                out.push_str("| sequence | J |\n|---|---|\n");
                for (name, j) in self.per_sequence.iter().flatten() {
                    out.push_str(&format!("| {name} | {j:.2} |\n"));
                }
                out.push_str(&format!(
                    "| J-mean | {} |\n\nFB-IoU {}\n",
                    num(self.j_mean),
                    num(self.fb_iou)
                ));
            }
        }
        out
    }

    /// The report as a JSON value without `timing`, for result comparisons.
    pub fn comparable_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("EvalReport serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("timing");
        }
        v
    }
}

/// Per-stage milliseconds of `edge bench`; stages that did not run are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StageMs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<f64>,
    /// The location prior from frame to frame (`edge run`'s `temporal_reach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<f64>,
}

/// tract time over ONNX Runtime time, per part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OrtRatios {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<f64>,
}

/// The ONNX Runtime peer measurement of `edge bench`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OrtBench {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_ms: Option<f64>,
    pub ratio_tract_over_ort: OrtRatios,
}

/// Output of `edge bench` (evaluation.md "Output").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub bundle: String,
    /// `[height, width]`.
    pub size: [usize; 2],
    pub threads: usize,
    /// Median end-to-end milliseconds per frame.
    pub frame_ms: f64,
    pub fps: f64,
    pub stage_ms: StageMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<OrtBench>,
}

impl BenchReport {
    /// The report as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("BenchReport serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVAL_KEYS: [&str; 20] = [
        "protocol",
        "data",
        "method",
        "backbone",
        "size",
        "precision",
        "shots",
        "folds",
        "episodes",
        "runs",
        "seed",
        "j_mean",
        "fb_iou",
        "miou",
        "per_sequence",
        "per_class",
        "per_fold",
        "temporal",
        "timing",
        "elapsed_s",
    ];

    #[test]
    fn davis_report_has_every_key_with_nulls() {
        let mut r = EvalReport::new(
            "davis",
            "data/davis2016",
            "panet",
            "mobilenetv2",
            [320, 576],
            "fp32",
            1,
        );
        r.j_mean = Some(44.123456789);
        r.fb_iou = Some(67.8);
        let mut per = BTreeMap::new();
        per.insert("blackswan".to_string(), 58.0);
        r.per_sequence = Some(per);
        r.timing.elapsed_s = 12.3;
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 19);
        for k in &EVAL_KEYS[..19] {
            assert!(o.contains_key(*k), "missing key {k}");
        }
        assert!(o["folds"].is_null() && o["episodes"].is_null() && o["miou"].is_null());
        assert!(o["per_class"].is_null() && o["per_fold"].is_null());
        assert!(o["temporal"].is_null());
        assert_eq!(o["size"], serde_json::json!([320, 576]));
        assert_eq!(o["j_mean"].as_f64().unwrap(), 44.123456789);
        assert_eq!(o["timing"]["elapsed_s"].as_f64().unwrap(), 12.3);
        assert!(line.starts_with("{\"protocol\":\"davis\""));
        // Round trip.
        let back: EvalReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        // Comparisons exclude timing.
        let mut r2 = r.clone();
        r2.timing.elapsed_s = 99.0;
        assert_eq!(r.comparable_json(), r2.comparable_json());
        assert!(r.comparable_json().get("timing").is_none());
    }

    #[test]
    fn coco_report_per_class_and_fold() {
        let mut r = EvalReport::new(
            "coco",
            "coco128",
            "panet",
            "mobilenetv2",
            [320, 320],
            "fp32",
            1,
        );
        r.folds = Some(vec![0, 1, 2, 3]);
        r.episodes = Some(1000);
        r.miou = Some(22.0);
        let mut pc = BTreeMap::new();
        pc.insert(
            "18".to_string(),
            ClassEntry {
                name: "dog".into(),
                iou: 51.2,
            },
        );
        r.per_class = Some(pc);
        r.per_fold = Some(vec![FoldEntry {
            fold: 0,
            miou: 30.1,
            miou_std: 0.0,
            classes: 16,
            fb_iou: Some(60.5),
            fb_iou_std: Some(0.25),
        }]);
        let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(v["per_class"]["18"]["name"], "dog");
        assert_eq!(v["per_class"]["18"]["iou"].as_f64().unwrap(), 51.2);
        assert_eq!(
            v["per_fold"][0],
            serde_json::json!({"fold": 0, "miou": 30.1, "miou_std": 0.0, "classes": 16,
                               "fb_iou": 60.5, "fb_iou_std": 0.25})
        );
        assert!(v["j_mean"].is_null());
    }

    #[test]
    fn markdown_table_has_a_row_per_fold_and_the_mean() {
        let mut r = EvalReport::new(
            "pascal-bam",
            "VOC2012",
            "panet",
            "mnv2",
            [473, 473],
            "fp32",
            1,
        );
        r.runs = 5;
        r.seed = 123;
        r.episodes = Some(1000);
        r.miou = Some(25.5);
        r.fb_iou = Some(55.25);
        let fold = |fold, miou, miou_std, fb: Option<f64>| FoldEntry {
            fold,
            miou,
            miou_std,
            classes: 5,
            fb_iou: fb,
            fb_iou_std: fb.map(|_| 0.5),
        };
        r.per_fold = Some(vec![
            fold(0, 20.0, 1.25, Some(50.5)),
            fold(1, 31.0, 0.0, None),
        ]);
        let t = r.markdown_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "**pascal-bam** on `VOC2012`: panet mnv2 (fp32), 473x473, 1-shot, 1000 episodes per \
             fold and run, seeds 123..127"
        );
        assert_eq!(
            lines[2],
            "| fold | classes | mIoU (mean ± std over 5 runs) | FB-IoU (mean ± std) |"
        );
        assert_eq!(lines[4], "| 0 | 5 | 20.00 ± 1.25 | 50.50 ± 0.50 |");
        assert_eq!(lines[5], "| 1 | 5 | 31.00 ± 0.00 | – |");
        assert_eq!(lines[6], "| mean | | 25.50 | 55.25 |");
        assert_eq!(lines.len(), 7);

        // Original-size input and DAVIS reports.
        let mut d = EvalReport::new("davis", "d", "panet", "b", [0, 0], "fp32", 1);
        d.j_mean = Some(44.75);
        d.fb_iou = Some(68.0);
        d.per_sequence = Some(BTreeMap::from([("cows".to_string(), 50.0)]));
        let t = d.markdown_table();
        assert!(
            t.starts_with("**davis** on `d`: panet b (fp32), original size, 1-shot, seed 0"),
            "{t}"
        );
        assert!(t.contains("| cows | 50.00 |\n| J-mean | 44.75 |"), "{t}");
        assert!(t.ends_with("FB-IoU 68.00\n"), "{t}");
    }

    #[test]
    fn bench_report_omits_missing_stages() {
        let r = BenchReport {
            bundle: "models/mnv2".into(),
            size: [320, 576],
            threads: 4,
            frame_ms: 20.0,
            fps: 50.0,
            stage_ms: StageMs {
                preprocess: Some(1.0),
                encoder: Some(15.0),
                head: Some(2.0),
                ..StageMs::default()
            },
            onnxruntime: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        let stages = v["stage_ms"].as_object().unwrap();
        assert_eq!(stages.len(), 3);
        assert!(!stages.contains_key("capture"));
        assert!(v.get("onnxruntime").is_none());
        let mut r2 = r.clone();
        r2.onnxruntime = Some(OrtBench {
            encoder_ms: Some(10.0),
            head_ms: Some(1.0),
            ratio_tract_over_ort: OrtRatios {
                encoder: Some(1.5),
                head: Some(2.0),
                end_to_end: Some(1.4),
            },
        });
        let v: serde_json::Value = serde_json::from_str(&r2.to_json_line()).unwrap();
        assert_eq!(v["onnxruntime"]["ratio_tract_over_ort"]["end_to_end"], 1.4);
        let back: BenchReport = serde_json::from_str(&r2.to_json_line()).unwrap();
        assert_eq!(back, r2);
    }
}
