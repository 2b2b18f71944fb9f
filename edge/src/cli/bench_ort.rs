//! `edge bench`'s ONNX Runtime peer: the same encoder graph with the same input bytes in
//! onnxruntime (through a Python that has it), its output checked against tract's before its
//! time is reported. A lab tool: only with edge's `lab` feature, which the device packages
//! leave out.

use super::median;
use anyhow::{bail, Context, Result};
use fss_core::preprocess::InputSize;
use fss_core::tensor::FeatureMap;
use fss_runtime::BundleEncoder;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest encoder output difference accepted between tract and ONNX Runtime (fp32).
pub const ORT_PARITY_TOL: f32 = 1e-4;
/// Largest int8 encoder output difference accepted between tract and ONNX Runtime, in steps
/// of the output's u8 scale (see the command's help).
pub const ORT_INT8_PARITY_STEPS: f32 = 32.0;

/// The tract vs ONNX Runtime tolerance of a bundle's encoder output, and how it is stated.
pub fn ort_parity_tolerance(m: &fss_core::bundle::Manifest) -> Result<(f32, String)> {
    if m.precision != "int8" {
        return Ok((ORT_PARITY_TOL, format!("{ORT_PARITY_TOL:e}")));
    }
    let step = m
        .quantization
        .as_ref()
        .and_then(|q| q.output_step)
        .filter(|s| s.is_finite() && *s > 0.0)
        .context(
            "int8 bundle without quantization.output_step in its manifest (the encoder \
             output is not a quantized conv's): no tolerance to compare with onnxruntime",
        )?;
    let tol = ORT_INT8_PARITY_STEPS * step;
    Ok((
        tol,
        format!("{tol:.3e} ({ORT_INT8_PARITY_STEPS} output steps of {step:.3e})"),
    ))
}

/// The Python that has onnxruntime, if any: `$EDGE_ORT_PYTHON`, else `.venv/bin/python` in
/// the ancestors of `bundle`, the working directory, the executable.
pub fn find_ort_python(bundle: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EDGE_ORT_PYTHON") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let mut starts = Vec::new();
    if let Ok(b) = std::fs::canonicalize(bundle) {
        starts.push(b);
    }
    if let Ok(c) = std::env::current_dir() {
        starts.push(c);
    }
    if let Ok(e) = std::env::current_exe().and_then(std::fs::canonicalize) {
        starts.push(e);
    }
    starts
        .iter()
        .flat_map(|s| s.ancestors())
        .map(|d| d.join(".venv/bin/python"))
        .find(|p| p.is_file())
}

const ORT_SCRIPT: &str = r#"
import sys, json, time
try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print("NO_ORT " + str(e), file=sys.stderr)
    sys.exit(3)
model, inp, shape, threads, runs, warmup, out, name = sys.argv[1:9]
shape = [int(v) for v in shape.split(",")]
x = np.fromfile(inp, dtype="<f4").reshape(shape)
so = ort.SessionOptions()
so.intra_op_num_threads = int(threads)
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
feeds = {name: x}
y = s.run(None, feeds)[0]
np.ascontiguousarray(y, dtype="<f4").tofile(out)
for _ in range(int(warmup)):
    s.run(None, feeds)
ts = []
for _ in range(int(runs)):
    t = time.perf_counter()
    s.run(None, feeds)
    ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"times_ms": ts, "shape": list(y.shape), "version": ort.__version__}))
"#;

/// How `edge bench` times ONNX Runtime: the bundle, intra-op threads, timed and warm-up runs.
pub struct OrtRun<'a> {
    pub bundle: &'a Path,
    pub threads: usize,
    pub runs: usize,
    pub warmup: usize,
}

/// Runs the encoder in ONNX Runtime on `input`; checks its output against tract's; returns
/// ONNX Runtime's median milliseconds.
pub fn ort_compare(
    args: &OrtRun,
    encoder: &BundleEncoder,
    size: InputSize,
    input: &[f32],
    tract_features: &FeatureMap,
) -> Result<f64> {
    let python = find_ort_python(args.bundle)
        .context("no Python with onnxruntime found ($EDGE_ORT_PYTHON or .venv/bin/python)")?;
    let dir = std::env::temp_dir().join(format!("edge-bench-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fss_core::EdgeError::io(&dir, e))?;
    let result = (|| -> Result<f64> {
        let in_path = dir.join("input.f32");
        let out_path = dir.join("output.f32");
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&in_path, bytes).map_err(|e| fss_core::EdgeError::io(&in_path, e))?;
        let shape = BundleEncoder::input_shape(size)
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let model = std::fs::canonicalize(encoder.bundle().encoder_path())?;
        let out = Command::new(&python)
            .arg("-c")
            .arg(ORT_SCRIPT)
            .arg(&model)
            .arg(&in_path)
            .arg(&shape)
            .arg(args.threads.to_string())
            .arg(args.runs.to_string())
            .arg(args.warmup.to_string())
            .arg(&out_path)
            .arg(&encoder.manifest().graphs.encoder.inputs[0].name)
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if let Some(line) = stderr.lines().find(|l| l.starts_with("NO_ORT")) {
                bail!(
                    "{} has no onnxruntime ({})",
                    python.display(),
                    line.trim_start_matches("NO_ORT ")
                );
            }
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            bail!("onnxruntime failed on {}: {last}", model.display());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("onnxruntime printed no result")?;
        let v: serde_json::Value =
            serde_json::from_str(line).context("onnxruntime result is not JSON")?;
        let times: Vec<f64> = v["times_ms"]
            .as_array()
            .context("onnxruntime result has no times")?
            .iter()
            .filter_map(|t| t.as_f64())
            .collect();
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .context("onnxruntime result has no shape")?
            .iter()
            .filter_map(|d| d.as_u64().map(|d| d as usize))
            .collect();
        let want = vec![
            1,
            tract_features.channels,
            tract_features.height,
            tract_features.width,
        ];
        if shape != want {
            bail!("onnxruntime output shape {shape:?} differs from tract's {want:?}");
        }
        let raw = std::fs::read(&out_path).map_err(|e| fss_core::EdgeError::io(&out_path, e))?;
        let ort: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if ort.len() != tract_features.data.len() {
            bail!(
                "onnxruntime output has {} values, tract's {}",
                ort.len(),
                tract_features.data.len()
            );
        }
        let diff = ort
            .iter()
            .zip(&tract_features.data)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        let (tol, tol_text) = ort_parity_tolerance(encoder.manifest())?;
        if diff.is_nan() || diff > tol {
            bail!("outputs differ: max abs diff tract vs onnxruntime {diff:e} > {tol_text}; timings not compared");
        }
        eprintln!(
            "onnxruntime {}: encoder output matches tract (max abs diff {diff:.2e} <= {tol_text})",
            v["version"].as_str().unwrap_or("?")
        );
        Ok(median(&times))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod parity_tests {
    use super::*;
    use fss_core::bundle::Quantization;

    fn int8_manifest(step: Option<f32>) -> fss_core::bundle::Manifest {
        let mut m = fss_tests::testkit::test_manifest(32, 32, 8, String::new());
        m.precision = "int8".to_string();
        m.quantization = Some(Quantization {
            method: "percentile".to_string(),
            percentile: Some(99.99),
            calibration: "calibration/ (32 images)".to_string(),
            layers_fp32: Vec::new(),
            weights: String::new(),
            activations: String::new(),
            output_step: step,
            layers: Vec::new(),
            measured: None,
        });
        m
    }

    #[test]
    fn fp32_bundles_keep_the_absolute_tolerance() {
        let m = fss_tests::testkit::test_manifest(32, 32, 8, String::new());
        assert_eq!(ort_parity_tolerance(&m).unwrap().0, ORT_PARITY_TOL);
    }

    #[test]
    fn int8_tolerance_is_counted_in_output_steps() {
        let (tol, text) = ort_parity_tolerance(&int8_manifest(Some(0.05))).unwrap();
        assert!((tol - ORT_INT8_PARITY_STEPS * 0.05).abs() < 1e-6, "{tol}");
        assert!(text.contains("output steps"), "{text}");
        for bad in [None, Some(0.0), Some(f32::NAN)] {
            let e = ort_parity_tolerance(&int8_manifest(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("output_step"), "{e}");
        }
    }
}
