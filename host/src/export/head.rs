//! The SMCP head as an ONNX graph (`head.onnx`): inputs `features` `[1, C, h, w]` and
//! `prototype` `[1, C]`, output `logits` `[1, 2, h, w]` at feature resolution (design.md,
//! "Per-method head contracts"). The edge runs it twice per target (`edge::smcp`); the
//! multi-class head is training-only and not exported.
//!
//! Nodes: `Reshape` + `Expand` (the prototype tiled over the query grid, its shape taken from
//! the features), `Concat`, `Conv` + `Relu`, `AveragePool` (k3 s2 p1, padding counted, as
//! torch's default), `Resize` (linear, half-pixel, to the full-scale map's shape: torch's
//! `align_corners = false`), `Add`. Every size is read from the input, so one graph serves
//! every input size.

use anyhow::{anyhow, Result};
use edge::bundle::{Dim, GraphSpec, TensorSpec};
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::ModelProto;

use super::onnx::{attr_int, attr_ints, attr_string, emit_conv, GraphBuilder};
use crate::backbone::layers::{Activation, Conv2d};
use crate::smcp::{Aspp, SmcpHead};

pub const HEAD_FILE: &str = "head.onnx";
pub const FEATURES_NAME: &str = "features";
pub const PROTOTYPE_NAME: &str = "prototype";
pub const LOGITS_NAME: &str = "logits";

/// Input and output specs of the head graph for `channels`-channel features.
pub fn head_io(channels: usize) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let map = |name: &str, c: usize| TensorSpec {
        name: name.into(),
        shape: vec![
            Dim::Fixed(1),
            Dim::Fixed(c),
            Dim::Symbol("h".into()),
            Dim::Symbol("w".into()),
        ],
    };
    let proto = TensorSpec {
        name: PROTOTYPE_NAME.into(),
        shape: vec![Dim::Fixed(1), Dim::Fixed(channels)],
    };
    (
        vec![map(FEATURES_NAME, channels), proto],
        vec![map(LOGITS_NAME, 2)],
    )
}

fn conv_relu(g: &mut GraphBuilder, c: &Conv2d, x: &str) -> Result<String> {
    emit_conv(g, c, None, Activation::Relu, x)
}

fn emit_aspp(g: &mut GraphBuilder, aspp: &Aspp, x: &str, base: &str) -> Result<String> {
    let mut acc = emit_conv(g, &aspp.branches[0], None, Activation::None, x)?;
    for b in &aspp.branches[1..] {
        let y = emit_conv(g, b, None, Activation::None, x)?;
        acc = g.node("Add", &format!("{base}.sum"), &[&acc, &y], vec![]);
    }
    Ok(acc)
}

fn avg_pool(g: &mut GraphBuilder, x: &str, base: &str) -> String {
    g.node(
        "AveragePool",
        base,
        &[x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_int("count_include_pad", 1),
        ],
    )
}

/// Bilinear (half-pixel) resize of `x` to the shape of `like` (same batch and channels).
fn resize_like(g: &mut GraphBuilder, x: &str, like: &str, base: &str) -> String {
    let sizes = g.node("Shape", &format!("{base}.sizes"), &[like], vec![]);
    g.node(
        "Resize",
        base,
        &[x, "", "", &sizes],
        vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "half_pixel"),
        ],
    )
}

/// The head graph of `head` (its inference part).
pub fn head_model(head: &SmcpHead) -> Result<ModelProto> {
    let c = head.shape.feature_channels as usize;
    let (inputs, outputs) = head_io(c);
    let mut g = GraphBuilder::new("smcp_head");
    let f = g.input(FEATURES_NAME, &inputs[0].shape)?;
    let p = g.input(PROTOTYPE_NAME, &inputs[1].shape)?;
    // tile(p) over the feature grid.
    let shape4 = g.initializer_raw(
        "prototype_shape",
        &[4],
        DataType::Int64,
        [1i64, c as i64, 1, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    )?;
    let p4 = g.node("Reshape", "prototype_4d", &[&p, &shape4], vec![]);
    let fshape = g.node("Shape", "features_shape", &[&f], vec![]);
    let tiled = g.node("Expand", "prototype_tiled", &[&p4, &fshape], vec![]);
    let x = g.node(
        "Concat",
        "fusion_input",
        &[&f, &tiled],
        vec![attr_int("axis", 1)],
    );
    let x = conv_relu(&mut g, &head.feat_rd, &x)?;
    // PFF.
    let pff = &head.pff;
    let x2 = avg_pool(&mut g, &x, "pff.pool2");
    let x3 = avg_pool(&mut g, &x2, "pff.pool4");
    let a1 = conv_relu(&mut g, &pff.scales[0], &x)?;
    let a2 = conv_relu(&mut g, &pff.scales[1], &x2)?;
    let a2 = resize_like(&mut g, &a2, &a1, "pff.up2");
    let a3 = conv_relu(&mut g, &pff.scales[2], &x3)?;
    let a3 = resize_like(&mut g, &a3, &a1, "pff.up4");
    let y = g.node("Add", "pff.sum", &[&a1, &a2], vec![]);
    let mut y = g.node("Add", "pff.sum", &[&y, &a3], vec![]);
    for conv in &pff.fuse {
        y = conv_relu(&mut g, conv, &y)?;
    }
    for r in &pff.residual {
        let h = conv_relu(&mut g, &r.reduce, &y)?;
        let h = conv_relu(&mut g, &r.mid, &h)?;
        let h = emit_conv(&mut g, &r.expand, None, Activation::None, &h)?;
        let s = g.node("Add", &format!("{}.add", r.expand.name), &[&y, &h], vec![]);
        y = g.node("Relu", &format!("{}.relu", r.expand.name), &[&s], vec![]);
    }
    let logits = emit_aspp(&mut g, &head.binary, &y, "binary")?;
    g.output(&logits, LOGITS_NAME, &outputs[0].shape)?;
    Ok(g.into_model("SMCP head: query features + prototype -> 2-class logits"))
}

/// Writes `head.onnx` into `dir` (atomically) and returns its manifest entry.
pub fn export_head(head: &SmcpHead, dir: &Path) -> Result<GraphSpec> {
    let path = dir.join(HEAD_FILE);
    super::write_model(&head_model(head)?, &path)?;
    let (inputs, outputs) = head_io(head.shape.feature_channels as usize);
    Ok(GraphSpec {
        file: HEAD_FILE.into(),
        inputs,
        outputs,
        sha256: edge::bundle::sha256_file(&path)?,
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

/// tch head pass vs tract on `path`, seeded inputs at an `h` x `w` feature map: max abs
/// difference and the largest |logit|.
pub fn head_parity(
    head: &SmcpHead,
    path: &Path,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    use tract_onnx::prelude::*;
    let c = head.shape.feature_channels as usize;
    let (f, p) = seeded_head_inputs(c, h, w, seed);
    let want = {
        let ft = tch::Tensor::from_slice(&f).view([1, c as i64, h as i64, w as i64]);
        let pt = tch::Tensor::from_slice(&p).view([1, c as i64]);
        super::onnx::tensor_f32(&tch::no_grad(|| head.pass(&ft, &pt, true)))?
    };
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| anyhow!("{}: tract cannot load it: {e}", path.display()))?
        .with_input_fact(0, f32::fact([1, c, h, w]).into())?
        .with_input_fact(1, f32::fact([1, c]).into())?
        .into_optimized()
        .map_err(|e| anyhow!("{}: tract cannot optimize it: {e}", path.display()))?
        .into_runnable()?;
    let out = plan.run(tvec!(
        tract_onnx::prelude::Tensor::from_shape(&[1, c, h, w], &f)?.into(),
        tract_onnx::prelude::Tensor::from_shape(&[1, c], &p)?.into()
    ))?;
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
