//! The method heads as ONNX graphs (`head.onnx`, design.md "Per-method head contracts"). Every
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
use fss_core::bundle::{Dim, GraphSpec, TensorSpec};
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::ModelProto;

use crate::dpnet::DpNetHead;
use crate::heads::MethodHead;
use crate::layers::{emit_conv, Activation, Conv2d};
use crate::onnx::{attr_int, attr_ints, attr_string, GraphBuilder};
use crate::sgone::{SgOneHead, SgOneVariant};
use crate::smcp::{Aspp, SmcpHead};

pub const HEAD_FILE: &str = "head.onnx";
pub const FEATURES_NAME: &str = "features";
pub const PROTOTYPE_NAME: &str = "prototype";
pub const LOGITS_NAME: &str = "logits";

/// Input and output specs of the SMCP head graph for `channels`-channel features.
pub fn smcp_io(channels: usize) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
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

/// The SMCP head graph of `head` (its inference part).
pub fn smcp_model(head: &SmcpHead) -> Result<ModelProto> {
    let c = head.shape.feature_channels as usize;
    let (inputs, outputs) = smcp_io(c);
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

pub const GUIDANCE_NAME: &str = "guidance";
pub const SUPPORT_FEATURES_NAME: &str = "support_features";
pub const SUPPORT_MASK_NAME: &str = "support_mask";

fn map_spec(name: &str, c: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![
            Dim::Fixed(1),
            Dim::Fixed(c),
            Dim::Symbol("h".into()),
            Dim::Symbol("w".into()),
        ],
    }
}

fn vector_spec(name: &str, d: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![Dim::Fixed(1), Dim::Fixed(d)],
    }
}

/// Input and output specs of a method's head graph.
pub fn head_io(head: &MethodHead) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    match head {
        MethodHead::Smcp(h) => smcp_io(h.shape.feature_channels as usize),
        MethodHead::SgOne(h) => sgone_io(h.shape.feature_channels as usize, h.shape.width as usize),
        MethodHead::DpNet(h) => dpnet_io(h.shape.feature_channels as usize),
    }
}

fn sgone_io(c: usize, w: usize) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    (
        vec![map_spec(FEATURES_NAME, c), vector_spec(PROTOTYPE_NAME, w)],
        vec![map_spec(LOGITS_NAME, 2), map_spec(GUIDANCE_NAME, w)],
    )
}

fn int64s(g: &mut GraphBuilder, base: &str, v: &[i64]) -> Result<String> {
    g.initializer_raw(
        base,
        &[v.len() as i64],
        DataType::Int64,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// `ReduceSum(x, axes = [axis])` (opset 13+: axes as an input).
fn reduce_sum(g: &mut GraphBuilder, x: &str, axis: i64, keep: bool, base: &str) -> Result<String> {
    let axes = int64s(g, &format!("{base}.axes"), &[axis])?;
    Ok(g.node(
        "ReduceSum",
        base,
        &[x, &axes],
        vec![attr_int("keepdims", keep as i64)],
    ))
}

/// `ReduceMax` / `ReduceMean` (opset 17: axes as an attribute).
fn reduce_attr(
    g: &mut GraphBuilder,
    op: &str,
    x: &str,
    axis: i64,
    keep: bool,
    base: &str,
) -> String {
    g.node(
        op,
        base,
        &[x],
        vec![
            attr_ints("axes", &[axis]),
            attr_int("keepdims", keep as i64),
        ],
    )
}

fn binary(g: &mut GraphBuilder, op: &str, a: &str, b: &str, base: &str) -> String {
    g.node(op, base, &[a, b], vec![])
}

fn reshape(g: &mut GraphBuilder, x: &str, shape: &[i64], base: &str) -> Result<String> {
    let s = int64s(g, &format!("{base}.shape"), shape)?;
    Ok(g.node("Reshape", base, &[x, &s], vec![]))
}

/// `sqrt(sum x^2 over axis (+ eps))`, kept dims.
fn l2_norm(
    g: &mut GraphBuilder,
    x: &str,
    axis: i64,
    eps: Option<f32>,
    base: &str,
) -> Result<String> {
    let sq = binary(g, "Mul", x, x, &format!("{base}.sq"));
    let mut s = reduce_sum(g, &sq, axis, true, &format!("{base}.sum"))?;
    if let Some(e) = eps {
        let e = g.scalar_f32(&format!("{base}.eps"), e)?;
        s = binary(g, "Add", &s, &e, &format!("{base}.add_eps"));
    }
    Ok(g.node("Sqrt", &format!("{base}.sqrt"), &[&s], vec![]))
}

/// `cos(x, v)` over channels as `sgone::cosine_map`: `x` `[1, W, h, w]`, `v4` `[1, W, 1, 1]`.
fn cosine_map(g: &mut GraphBuilder, x: &str, v4: &str, base: &str) -> Result<String> {
    let xv = binary(g, "Mul", x, v4, &format!("{base}.xv"));
    let dot = reduce_sum(g, &xv, 1, true, &format!("{base}.dot"))?;
    let nx = l2_norm(g, x, 1, None, &format!("{base}.nx"))?;
    let nv = l2_norm(g, v4, 1, None, &format!("{base}.nv"))?;
    let den = binary(g, "Mul", &nx, &nv, &format!("{base}.nxnv"));
    let eps = g.scalar_f32(&format!("{base}.eps"), crate::sgone::COSINE_EPS as f32)?;
    let den = binary(g, "Add", &den, &eps, &format!("{base}.den"));
    Ok(binary(g, "Div", &dot, &den, &format!("{base}.cos")))
}

fn concat(g: &mut GraphBuilder, xs: &[&str], base: &str) -> String {
    g.node("Concat", base, xs, vec![attr_int("axis", 1)])
}

/// The SG-One head graph (module doc; `crate::sgone` for the layers).
pub fn sgone_model(head: &SgOneHead) -> Result<ModelProto> {
    if head.shape.variant == SgOneVariant::Code {
        anyhow::bail!(
            "an SG-One model of the `code` variant cannot be exported: its padding-1 exit conv gives (h + 2) x (w + 2) logits, off the feature grid the edge head contract needs (train with --sgone-variant paper)"
        );
    }
    let w = head.shape.width;
    let (inputs, outputs) = sgone_io(head.shape.feature_channels as usize, w as usize);
    let mut g = GraphBuilder::new("sgone_head");
    let f = g.input(FEATURES_NAME, &inputs[0].shape)?;
    let v = g.input(PROTOTYPE_NAME, &inputs[1].shape)?;
    let g1 = conv_relu(&mut g, &head.guide[0], &f)?;
    let g2 = conv_relu(&mut g, &head.guide[1], &g1)?;
    let guidance = emit_conv(&mut g, &head.cls, None, Activation::None, &g2)?;
    let s3 = conv_relu(&mut g, &head.seg[0], &f)?;
    let c4 = concat(&mut g, &[&s3, &g1], "seg4.input");
    let s4 = conv_relu(&mut g, &head.seg[1], &c4)?;
    let c5 = concat(&mut g, &[&s4, &g2], "seg5.input");
    let s5 = emit_conv(&mut g, &head.seg[2], None, Activation::None, &c5)?;
    let v4 = reshape(&mut g, &v, &[1, w, 1, 1], "vector_4d")?;
    let sim = cosine_map(&mut g, &guidance, &v4, "similarity")?;
    let z = binary(&mut g, "Mul", &s5, &sim, "guided");
    let h = conv_relu(&mut g, &head.fuse, &z)?;
    let logits = emit_conv(&mut g, &head.exit, None, Activation::None, &h)?;
    g.output(&logits, LOGITS_NAME, &outputs[0].shape)?;
    g.output(&guidance, GUIDANCE_NAME, &outputs[1].shape)?;
    Ok(g.into_model(
        "SG-One head: query features + guidance vector -> 2-class logits, guidance features",
    ))
}

/// The DPNet head graph (module doc; `crate::dpnet` for the computation).
pub fn dpnet_model(head: &DpNetHead) -> Result<ModelProto> {
    use crate::dpnet::{INSIDE_FRACTION, MASK_OFFSET, NORM_EPS, SELECT_EPS};
    let c = head.shape.feature_channels;
    let (inputs, outputs) = dpnet_io(c as usize);
    let mut g = GraphBuilder::new("dpnet_head");
    let f = g.input(FEATURES_NAME, &inputs[0].shape)?;
    let p = g.input(PROTOTYPE_NAME, &inputs[1].shape)?;
    let sf = g.input(SUPPORT_FEATURES_NAME, &inputs[2].shape)?;
    let sm = g.input(SUPPORT_MASK_NAME, &inputs[3].shape)?;
    let norm_eps = Some(NORM_EPS as f32);
    // Cycle comparison.
    let fq = reshape(&mut g, &f, &[1, c, -1], "ccm.fq")?;
    let nq = l2_norm(&mut g, &fq, 1, norm_eps, "ccm.fq_norm")?;
    let fqn = binary(&mut g, "Div", &fq, &nq, "ccm.fqn");
    let ns = l2_norm(&mut g, &sf, 1, norm_eps, "ccm.fs_norm")?;
    let sn = binary(&mut g, "Div", &sf, &ns, "ccm.fsn");
    let fqt = g.node(
        "Transpose",
        "ccm.fqn_t",
        &[&fqn],
        vec![attr_ints("perm", &[0, 2, 1])],
    );
    let a = binary(&mut g, "MatMul", &fqt, &sn, "ccm.affinity");
    let largest = reduce_attr(&mut g, "ReduceMax", &sm, 1, true, "ccm.mask_max");
    let half = g.scalar_f32("ccm.inside_fraction", INSIDE_FRACTION as f32)?;
    let thr = binary(&mut g, "Min", &largest, &half, "ccm.inside_threshold");
    let inside = binary(&mut g, "GreaterOrEqual", &sm, &thr, "ccm.inside_bool");
    let inside = g.node(
        "Cast",
        "ccm.inside",
        &[&inside],
        vec![attr_int("to", DataType::Float as i64)],
    );
    let inside3 = reshape(&mut g, &inside, &[1, 1, -1], "ccm.inside3")?;
    let big = g.scalar_f32("ccm.offset", MASK_OFFSET as f32)?;
    let one = g.scalar_f32("ccm.one", 1.0)?;
    let outside_neg = binary(&mut g, "Sub", &inside3, &one, "ccm.inside_minus_one");
    let off_in = binary(&mut g, "Mul", &outside_neg, &big, "ccm.off_in");
    let a_in = binary(&mut g, "Add", &a, &off_in, "ccm.a_in");
    let in_max = reduce_attr(&mut g, "ReduceMax", &a_in, 2, false, "ccm.in_max");
    let off_out = binary(&mut g, "Mul", &inside3, &big, "ccm.off_out");
    let a_out = binary(&mut g, "Sub", &a, &off_out, "ccm.a_out");
    let out_max = reduce_attr(&mut g, "ReduceMax", &a_out, 2, false, "ccm.out_max");
    let cycle = binary(
        &mut g,
        "GreaterOrEqual",
        &in_max,
        &out_max,
        "ccm.cycle_bool",
    );
    let cycle = g.node(
        "Cast",
        "ccm.cycle",
        &[&cycle],
        vec![attr_int("to", DataType::Float as i64)],
    );
    let p3 = reshape(&mut g, &p, &[1, c, 1], "ccm.p3")?;
    let np3 = l2_norm(&mut g, &p3, 1, norm_eps, "ccm.p_norm")?;
    let pn = binary(&mut g, "Div", &p3, &np3, "ccm.pn");
    let prod = binary(&mut g, "Mul", &fqn, &pn, "ccm.sim_prod");
    let sim = reduce_sum(&mut g, &prod, 1, false, "ccm.similarity")?;
    let mean = reduce_attr(&mut g, "ReduceMean", &sim, 1, true, "ccm.similarity_mean");
    let above = binary(&mut g, "GreaterOrEqual", &sim, &mean, "ccm.above_bool");
    let above = g.node(
        "Cast",
        "ccm.above",
        &[&above],
        vec![attr_int("to", DataType::Float as i64)],
    );
    let sel = binary(&mut g, "Mul", &cycle, &above, "ccm.selected");
    let sel3 = reshape(&mut g, &sel, &[1, 1, -1], "ccm.selected3")?;
    let weighted = binary(&mut g, "Mul", &fq, &sel3, "ccm.weighted");
    let num = reduce_sum(&mut g, &weighted, 2, false, "ccm.num_sum")?;
    let eps = g.scalar_f32("ccm.select_eps", SELECT_EPS as f32)?;
    let pe = binary(&mut g, "Mul", &p, &eps, "ccm.p_eps");
    let num = binary(&mut g, "Add", &num, &pe, "ccm.num");
    let den = reduce_sum(&mut g, &sel, 1, true, "ccm.count")?;
    let den = binary(&mut g, "Add", &den, &eps, "ccm.den");
    let pq = binary(&mut g, "Div", &num, &den, "pseudo_prototype");
    // Prototype interaction.
    let np = l2_norm(&mut g, &p, 1, norm_eps, "pim.p_norm")?;
    let npq = l2_norm(&mut g, &pq, 1, norm_eps, "pim.pq_norm")?;
    let norms = binary(&mut g, "Mul", &np, &npq, "pim.norms");
    let ppq = binary(&mut g, "Mul", &p, &pq, "pim.p_pq");
    let corr = binary(&mut g, "Div", &ppq, &norms, "pim.corr_unit");
    let cs = g.scalar_f32("pim.channels", c as f32)?;
    let corr = binary(&mut g, "Mul", &corr, &cs, "pim.corr");
    let corr4 = reshape(&mut g, &corr, &[1, c, 1, 1], "pim.corr4")?;
    let gate = emit_conv(&mut g, &head.gate, None, Activation::None, &corr4)?;
    let gate = g.node("Sigmoid", "pim.sigmoid", &[&gate], vec![]);
    let gain = binary(&mut g, "Add", &gate, &one, "pim.gain");
    let f2 = binary(&mut g, "Mul", &f, &gain, "pim.features");
    let p4 = reshape(&mut g, &p, &[1, c, 1, 1], "pim.p4")?;
    let p2 = binary(&mut g, "Mul", &p4, &gain, "pim.prototype");
    let pq4 = reshape(&mut g, &pq, &[1, c, 1, 1], "pim.pq4")?;
    let pq2 = binary(&mut g, "Mul", &pq4, &gain, "pim.pseudo_prototype");
    // Multi-scale fusion.
    let x1 = conv_relu(&mut g, &head.reduce, &f2)?;
    let pr = conv_relu(&mut g, &head.reduce, &p2)?;
    let pqr = conv_relu(&mut g, &head.reduce, &pq2)?;
    let x2 = avg_pool(&mut g, &x1, "msf.pool2");
    let x3 = avg_pool(&mut g, &x2, "msf.pool4");
    let mut acc: Option<String> = None;
    for (i, xs) in [&x1, &x2, &x3].into_iter().enumerate() {
        let base = format!("msf{}", 1 << i);
        // The 1x1 merge conv over concat[x, tile(P), tile(P_q), cos, cos] as the sum of its
        // slices: the prototype terms are computed once at 1x1 and broadcast (the same
        // function; it also keeps tract's optimizer off a broadcast it cannot rewrite).
        let w = head.shape.width;
        let parts = split_input_channels(&head.merge[i], &[w, w, w, 2]);
        let cp = cosine_map(&mut g, xs, &pr, &format!("{base}.cos_p"))?;
        let cq = cosine_map(&mut g, xs, &pqr, &format!("{base}.cos_pq"))?;
        let cos = concat(&mut g, &[&cp, &cq], &format!("{base}.cosines"));
        let tx = emit_conv(&mut g, &parts[0], None, Activation::None, xs)?;
        let tp = emit_conv(&mut g, &parts[1], None, Activation::None, &pr)?;
        let tq = emit_conv(&mut g, &parts[2], None, Activation::None, &pqr)?;
        let tc = emit_conv(&mut g, &parts[3], None, Activation::None, &cos)?;
        let y = binary(&mut g, "Add", &tx, &tp, &format!("{base}.merge_p"));
        let y = binary(&mut g, "Add", &y, &tq, &format!("{base}.merge_pq"));
        let y = binary(&mut g, "Add", &y, &tc, &format!("{base}.merge_cos"));
        let y = g.node("Relu", &format!("{base}.merge_relu"), &[&y], vec![]);
        let y = conv_relu(&mut g, &head.refine[i], &y)?;
        let y = if i == 0 {
            y
        } else {
            resize_like(&mut g, &y, &x1, &format!("{base}.up"))
        };
        acc = Some(match acc {
            None => y,
            Some(a) => binary(&mut g, "Add", &a, &y, "msf.sum"),
        });
    }
    let mut d = acc.expect("three scales");
    for conv in &head.decoder {
        d = conv_relu(&mut g, conv, &d)?;
    }
    let logits = emit_conv(&mut g, &head.classifier, None, Activation::None, &d)?;
    g.output(&logits, LOGITS_NAME, &outputs[0].shape)?;
    Ok(g.into_model(
        "DPNet head (reconstruction): query features + prototype + support memory -> 2-class logits",
    ))
}

/// A conv without groups split by input channels into convs over consecutive slices of
/// `sizes` channels; the bias goes with the first slice.
fn split_input_channels(conv: &Conv2d, sizes: &[i64]) -> Vec<Conv2d> {
    let mut start = 0;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let part = Conv2d {
                name: format!("{}.in{start}", conv.name),
                weight: conv.weight.narrow(1, start, n).contiguous(),
                bias: if i == 0 {
                    conv.bias.as_ref().map(|b| b.shallow_clone())
                } else {
                    None
                },
                stride: conv.stride,
                padding: conv.padding,
                dilation: conv.dilation,
                groups: conv.groups,
            };
            start += n;
            part
        })
        .collect()
}

fn dpnet_io(c: usize) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let n = || Dim::Symbol("n".into());
    (
        vec![
            map_spec(FEATURES_NAME, c),
            vector_spec(PROTOTYPE_NAME, c),
            TensorSpec {
                name: SUPPORT_FEATURES_NAME.into(),
                shape: vec![Dim::Fixed(1), Dim::Fixed(c), n()],
            },
            TensorSpec {
                name: SUPPORT_MASK_NAME.into(),
                shape: vec![Dim::Fixed(1), n()],
            },
        ],
        vec![map_spec(LOGITS_NAME, 2)],
    )
}

/// The head graph of a method's head.
pub fn head_model(head: &MethodHead) -> Result<ModelProto> {
    match head {
        MethodHead::Smcp(h) => smcp_model(h),
        MethodHead::SgOne(h) => sgone_model(h),
        MethodHead::DpNet(h) => dpnet_model(h),
    }
}

/// Writes `head.onnx` into `dir` (atomically) and returns its manifest entry.
pub fn export_head(head: &MethodHead, dir: &Path) -> Result<GraphSpec> {
    let path = dir.join(HEAD_FILE);
    super::write_model(&head_model(head)?, &path)?;
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
