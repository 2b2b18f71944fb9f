//! Writing a method's head graph (`head.onnx`, design.md "Per-method head contracts") and its
//! parity check against tch. Each head's graph is written beside its tch forward (`onnx_model`
//! in `crate::smcp`, `crate::sgone`, `crate::dpnet`); the ports and their shapes are the
//! method's contract (`fss_core::method`). Every
//! head takes `features` `[1, C, h, w]` and `prototype` `[1, D]` and gives `logits`
//! `[1, 2, h, w]` at feature resolution:
//! * SMCP: D = C; the edge runs it twice per target (`fss_core::smcp`); the multi-class head is
//!   training-only and not exported.
//! * SG-One: D = the head width (the guidance vector); a second output `guidance`
//!   `[1, D, h, w]` gives the guidance features the support vector is pooled from.
//! * DPNet: D = C, and two more inputs, the support memory `support_features` `[1, C, n]` and
//!   `support_mask` `[1, n]` (`fss_core::dpnet`); the auxiliary classifiers are not exported.
//!
//! Nodes: `Reshape` + `Expand` (the prototype tiled over the query grid, its shape taken from
//! the features), `Concat`, `Conv` + `Relu`, `AveragePool` (k3 s2 p1, padding counted, as
//! torch's default), `Resize` (linear, half-pixel, to the full-scale map's shape: torch's
//! `align_corners = false`), `Add`. Every size is read from the input, so one graph serves
//! every input size.

use anyhow::{anyhow, Result};
use fss_core::bundle::{GraphSpec, TensorSpec};
use std::path::Path;

use crate::heads::MethodHead;

pub const HEAD_FILE: &str = "head.onnx";

/// Input and output specs of a method's head graph (its method's contract at the head's sizes).
pub fn head_io(head: &MethodHead) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let (channels, prototype_dim) = head.port_sizes();
    head.method()
        .head_ports(channels, prototype_dim)
        .expect("a head's method has a head graph")
}

/// Writes `head.onnx` into `dir` (atomically) and returns its manifest entry.
pub fn export_head(head: &MethodHead, dir: &Path) -> Result<GraphSpec> {
    let path = dir.join(HEAD_FILE);
    super::write_model(&head.onnx_model()?, &path)?;
    let (inputs, outputs) = head_io(head);
    Ok(GraphSpec {
        file: HEAD_FILE.into(),
        inputs,
        outputs,
        sha256: fss_core::bundle::sha256_file(&path)?,
    })
}

/// Seeded head inputs at an `h` x `w` feature map: features uniform in [0, 3) (the range of
/// ReLU6 features) and the prototype as the mean feature of the top-left quarter.
pub fn seeded_head_inputs(c: usize, h: usize, w: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let f: Vec<f32> = (0..c * h * w)
        .map(|_| rng.random_range(0f32..3f32))
        .collect();
    let (qh, qw) = (h.div_ceil(2), w.div_ceil(2));
    let p = (0..c)
        .map(|ch| {
            let mut s = 0f64;
            for y in 0..qh {
                for x in 0..qw {
                    s += f[ch * h * w + y * w + x] as f64;
                }
            }
            (s / (qh * qw) as f64) as f32
        })
        .collect();
    (f, p)
}

/// One graph input: its shape and values.
type ShapedInput = (Vec<usize>, Vec<f32>);

/// A head's seeded inputs and the tch logits for them.
fn parity_case(
    head: &MethodHead,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<(Vec<ShapedInput>, Vec<f32>)> {
    use tch::Tensor as T;
    let t = |shape: &[usize], v: &[f32]| {
        T::from_slice(v).view(
            shape
                .iter()
                .map(|&d| d as i64)
                .collect::<Vec<_>>()
                .as_slice(),
        )
    };
    match head {
        MethodHead::Smcp(sh) => {
            let c = sh.shape.feature_channels as usize;
            let (f, p) = seeded_head_inputs(c, h, w, seed);
            let out = tch::no_grad(|| sh.pass(&t(&[1, c, h, w], &f), &t(&[1, c], &p), true));
            Ok((
                vec![(vec![1, c, h, w], f), (vec![1, c], p)],
                crate::onnx::tensor_f32(&out)?,
            ))
        }
        MethodHead::SgOne(sg) => {
            let c = sg.shape.feature_channels as usize;
            let (f, _) = seeded_head_inputs(c, h, w, seed);
            let ft = t(&[1, c, h, w], &f);
            // The guidance vector: the pooled guidance features of the top-left quarter, as a
            // support's would be.
            let v = tch::no_grad(|| {
                let g = sg.guidance(&ft);
                let (qh, qw) = (h.div_ceil(2) as i64, w.div_ceil(2) as i64);
                g.narrow(2, 0, qh).narrow(3, 0, qw).mean_dim(
                    [2i64, 3].as_slice(),
                    false,
                    tch::Kind::Float,
                )
            });
            let vv = crate::onnx::tensor_f32(&v)?;
            let out = tch::no_grad(|| sg.pass(&ft, &v));
            let d = vv.len();
            Ok((
                vec![(vec![1, c, h, w], f), (vec![1, d], vv)],
                crate::onnx::tensor_f32(&out)?,
            ))
        }
        MethodHead::DpNet(dp) => {
            let c = dp.shape.feature_channels as usize;
            let (f, p) = seeded_head_inputs(c, h, w, seed);
            // The memory: the same features pooled to the grid, the top-left quarter marked.
            let ft = t(&[1, c, h, w], &f);
            let mut mask = vec![0f32; 4 * h * w];
            for y in 0..2 * h {
                for x in 0..2 * w {
                    if y < h && x < w {
                        mask[y * 2 * w + x] = 1.0;
                    }
                }
            }
            let mt = t(&[1, 2 * h, 2 * w], &mask);
            let (mf, mm) = crate::dpnet::support_memory(&ft, &mt);
            let pt = t(&[1, c], &p);
            let out = tch::no_grad(|| dp.pass(&ft, &pt, &mf, &mm, false).logits);
            let n = mm.size()[1] as usize;
            Ok((
                vec![
                    (vec![1, c, h, w], f),
                    (vec![1, c], p),
                    (vec![1, c, n], crate::onnx::tensor_f32(&mf)?),
                    (vec![1, n], crate::onnx::tensor_f32(&mm)?),
                ],
                crate::onnx::tensor_f32(&out)?,
            ))
        }
    }
}

/// tch head pass vs tract on `path`, seeded inputs at an `h` x `w` feature map: max abs
/// difference and the largest |logit|.
pub fn head_parity(
    head: &MethodHead,
    path: &Path,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    use tract_onnx::prelude::*;
    let (inputs, want) = parity_case(head, h, w, seed)?;
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| anyhow!("{}: tract cannot load it: {e}", path.display()))?;
    for (i, (shape, _)) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(shape.as_slice()).into())?;
    }
    let plan = model
        .into_optimized()
        .map_err(|e| anyhow!("{}: tract cannot optimize it: {e}", path.display()))?
        .into_runnable()?;
    let tensors: TVec<TValue> = inputs
        .iter()
        .map(|(shape, v)| Ok(tract_onnx::prelude::Tensor::from_shape(shape, v)?.into()))
        .collect::<Result<_>>()?;
    let out = plan.run(tensors)?;
    let got = out[0].to_plain_array_view::<f32>()?;
    if got.shape() != [1, 2, h, w] {
        anyhow::bail!(
            "{}: tract gives logits {:?}, expected [1, 2, {h}, {w}]",
            path.display(),
            got.shape()
        );
    }
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (a, b) in want.iter().zip(got.iter()) {
        let d = (*a as f64 - *b as f64).abs();
        if d.is_nan() {
            return Ok((f64::NAN, scale));
        }
        diff = diff.max(d);
        scale = scale.max(a.abs() as f64);
    }
    Ok((diff, scale))
}
