//! Every op type of `host::layers`, alone in a graph: the nodes it exports, run in tract, against
//! its tch forward — fp32 for each layer kind and each padding, activation and grouping form,
//! int8 for the quantized conv against its tch simulation.
//!
//! The fp32 tolerance is the floating-point error bound of the computation, not a measured
//! margin: an output accumulated from `n` products carries a rounding error of at most about
//! `n * eps * sum |w| |x|` in each implementation (Higham, the dot-product bound), so tch and
//! tract may differ by twice that. `sum |w| |x|` is computed element by element by running the
//! same op on `|x|` with `|w|` and the absolute bias terms (activations dropped: they shrink
//! values); `n` is the op's accumulation length, summed along a block. The int8 gate is one
//! output quantization step (see `int8_conv_matches_its_tch_simulation`).

use std::collections::{BTreeMap, HashSet};

use fss_core::bundle::Dim;
use fss_tests::TempDir;
use host::export;
use host::layers::int8::Range;
use host::layers::{
    fold_conv_bn, Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBnAct, ConvRanges, Emitter,
    GlobalAvgPool, Int8Plan, InvertedResidual, Layer, Linear, MaxPool2d, Padding, QuantConv, Scope,
};
use host::onnx::{self, GraphBuilder};
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::det;

/// Overwrites a parameter in place.
fn set(t: &Tensor, v: &Tensor) {
    tch::no_grad(|| {
        t.shallow_clone().copy_(v);
    });
}

/// A conv layer with deterministic weights (and BatchNorm statistics far from identity).
fn conv_layer(scope: &Scope, cfg: Conv2dConfig, bn: bool, act: Activation, seed: u32) -> ConvBnAct {
    let conv = Conv2d::new(&scope.sub("conv"), cfg);
    let wshape = conv.weight.size();
    let fan_in = (wshape[1] * wshape[2] * wshape[3]) as f64;
    set(
        &conv.weight,
        &det(&wshape, seed, 2.4 / fan_in.sqrt(), 0.05 / fan_in.sqrt()),
    );
    if let Some(b) = &conv.bias {
        set(b, &det(&b.size(), seed + 1, 1.0, 0.1));
    }
    let bn = bn.then(|| {
        let c = conv.out_channels();
        let bn = BatchNorm2d::new(&scope.sub("bn"), c, 1e-3, 0.01);
        set(&bn.weight, &det(&[c], seed + 2, 2.0, 1.5));
        set(&bn.bias, &det(&[c], seed + 3, 1.0, 0.0));
        set(&bn.running_mean, &det(&[c], seed + 4, 0.6, 0.0));
        set(&bn.running_var, &det(&[c], seed + 5, 3.0, 1.55));
        bn
    });
    ConvBnAct { conv, bn, act }
}

/// `sum |w| |x|` of a conv layer on `|x|` (element by element, BatchNorm folded, its mean and
/// shift counted apart so that their cancellation in the folded bias hides no rounding), and
/// its accumulation length.
fn conv_bound(l: &ConvBnAct, abs_x: &Tensor) -> (Tensor, usize) {
    let f = fold_conv_bn(&l.conv, l.bn.as_ref()).unwrap();
    let w = Tensor::from_slice(&f.weight).view(f.shape.as_slice()).abs();
    let c = f.shape[0];
    let bias = l
        .conv
        .bias
        .as_ref()
        .map(Tensor::abs)
        .unwrap_or_else(|| Tensor::zeros([c], (Kind::Float, Device::Cpu)));
    let bias = match &l.bn {
        Some(bn) => {
            let s = (&bn.weight / (&bn.running_var + bn.eps).sqrt()).abs();
            bias * &s + bn.running_mean.abs() * &s + bn.bias.abs()
        }
        None => bias,
    };
    let n = (f.shape[1] * f.shape[2] * f.shape[3]) as usize + 3;
    (l.conv.forward_with(abs_x, &w, Some(&bias)), n)
}

/// `sum |w| |x|` of a layer on `x`, element by element, and its accumulation length.
fn bound(layer: &Layer, x: &Tensor) -> (Tensor, usize) {
    let abs_x = x.abs();
    tch::no_grad(|| match layer {
        Layer::Linear(l) => {
            let w = l.weight.abs();
            let b = l.bias.as_ref().map(Tensor::abs);
            let n = w.size()[1] as usize + 1;
            (abs_x.flatten(1, -1).linear(&w, b.as_ref()), n)
        }
        Layer::GlobalAvgPool(_) => {
            let s = x.size();
            (layer.forward(&abs_x, false), (s[2] * s[3]) as usize + 1)
        }
        _ => {
            let mut n = 0;
            let a = layer.forward_convs(&abs_x, &mut |l, x| {
                let (a, k) = conv_bound(l, x);
                n += k;
                a
            });
            // A residual sum adds one rounding.
            (a, n + 1)
        }
    })
}

/// The graph of `layer` alone: input `x` `[1, C, "H", "W"]` (tract pins it), output `y` of
/// `out_dims`; with `int8`, the convs it names are written int8. Returns the model and the
/// emitter's record (convs written fp32, last int8 output step).
fn op_model(
    layer: &Layer,
    in_channels: usize,
    out_dims: &[Dim],
    int8: Option<Int8Plan>,
) -> (tract_onnx::pb::ModelProto, Vec<String>, Option<f32>) {
    let mut e = Emitter::new(GraphBuilder::new("op"), int8);
    let dims = [
        Dim::Fixed(1),
        Dim::Fixed(in_channels),
        Dim::Symbol("H".into()),
        Dim::Symbol("W".into()),
    ];
    let x = e.graph.input("x", &dims).unwrap();
    let y = layer.emit(&mut e, &x, 0).unwrap();
    e.graph.output(&y, "y", out_dims).unwrap();
    (
        e.graph.into_model("one op"),
        e.layers_fp32,
        e.last_output_scale,
    )
}

/// The output dims of a graph whose tch output is `t`: batch and channels fixed, the rest
/// symbolic.
fn out_dims(t: &Tensor) -> Vec<Dim> {
    t.size()
        .iter()
        .enumerate()
        .map(|(i, &d)| match i {
            0 | 1 => Dim::Fixed(d as usize),
            2 => Dim::Symbol("h".into()),
            _ => Dim::Symbol("w".into()),
        })
        .collect()
}

/// Writes `model` and runs it in tract on `x`.
fn run_tract(tag: &str, model: &tract_onnx::pb::ModelProto, x: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let dir = TempDir::new("layer-op");
    let path = dir.path().join("op.onnx");
    export::write_model(model, &path).unwrap();
    let shape: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    export::tract_run(&path, &onnx::tensor_f32(x).unwrap(), &shape)
        .unwrap_or_else(|e| panic!("{tag}: {e:#}"))
}

/// Runs `layer` on `x` in tch and, exported alone, in tract; asserts the two agree within the
/// floating-point bound. Returns the largest error relative to its bound.
fn check_fp32(tag: &str, layer: &Layer, x: &Tensor) -> f64 {
    let want = tch::no_grad(|| layer.forward(x, false));
    let (model, _, _) = op_model(layer, x.size()[1] as usize, &out_dims(&want), None);
    let got = run_tract(tag, &model, x);
    let want_shape: Vec<usize> = want.size().iter().map(|&d| d as usize).collect();
    assert_eq!(got.0, want_shape, "{tag}: output shape");
    let (a, n) = bound(layer, x);
    let want = onnx::tensor_f32(&want).unwrap();
    let a = onnx::tensor_f32(&a).unwrap();
    let eps = f32::EPSILON as f64;
    let mut worst = 0f64;
    let mut max_tol = 0f64;
    let max_y = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    for (i, ((&g, &w), &s)) in got.1.iter().zip(&want).zip(&a).enumerate() {
        let tol = 2.0 * n as f64 * eps * s as f64 + f64::MIN_POSITIVE;
        let d = (g as f64 - w as f64).abs();
        assert!(
            d <= tol,
            "{tag}: element {i}: tract {g} vs tch {w} ({d:e} > bound {tol:e}, n {n})"
        );
        worst = worst.max(d / tol);
        max_tol = max_tol.max(tol);
    }
    // The bound has teeth: far below the values it checks.
    assert!(
        max_tol < 1e-3 * max_y,
        "{tag}: bound {max_tol:e} vs values up to {max_y}"
    );
    println!("{tag}: {want_shape:?}, error at most {worst:.3} of the bound (n {n}, bound <= {max_tol:.2e}, |y| <= {max_y:.2})");
    worst
}

/// Even and odd sizes (the odd pixel of TF "SAME" padding goes to the bottom/right).
const SIZES: [(i64, i64); 3] = [(16, 20), (17, 23), (9, 12)];

fn input(c: i64, h: i64, w: i64, seed: u32) -> Tensor {
    det(&[1, c, h, w], seed, 8.0, 0.5)
}

#[test]
fn conv_layers_match_tch_in_every_form() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = Scope::root(&vs.root());
    let c = 8;
    let cases: Vec<(&str, ConvBnAct)> = vec![
        (
            "dense 3x3, pads 1, BatchNorm, ReLU",
            conv_layer(
                &root.sub("a"),
                Conv2dConfig::new(c, 12, 3).padding(Padding::symmetric(1, 1)),
                true,
                Activation::Relu,
                10,
            ),
        ),
        (
            "depthwise 3x3 stride 2 TF SAME (auto_pad), BatchNorm, ReLU6",
            conv_layer(
                &root.sub("b"),
                Conv2dConfig::new(c, c, 3)
                    .stride(2)
                    .padding(Padding::TfSame)
                    .depthwise(),
                true,
                Activation::Relu6,
                20,
            ),
        ),
        (
            "depthwise 5x5 stride 2 TF SAME (auto_pad), BatchNorm, ReLU6",
            conv_layer(
                &root.sub("c"),
                Conv2dConfig::new(c, c, 5)
                    .stride(2)
                    .padding(Padding::TfSame)
                    .depthwise(),
                true,
                Activation::Relu6,
                30,
            ),
        ),
        (
            "dense 5x5 stride 1 TF SAME (fixed pads), no BatchNorm, bias, no activation",
            conv_layer(
                &root.sub("d"),
                Conv2dConfig::new(c, 4, 5)
                    .padding(Padding::TfSame)
                    .bias(true),
                false,
                Activation::None,
                40,
            ),
        ),
        (
            "pointwise 1x1, bias and BatchNorm, no activation",
            conv_layer(
                &root.sub("e"),
                Conv2dConfig::new(c, 16, 1).bias(true),
                true,
                Activation::None,
                50,
            ),
        ),
        (
            "grouped 3x3 (2 groups), dilation 2, pads 2, ReLU",
            conv_layer(
                &root.sub("f"),
                Conv2dConfig::new(c, 6, 3)
                    .groups(2)
                    .dilation(2)
                    .padding(Padding::symmetric(2, 2)),
                false,
                Activation::Relu,
                60,
            ),
        ),
        (
            "dense 3x3 stride 2, pads [0, 0, 1, 1] (explicit, asymmetric), ReLU6",
            conv_layer(
                &root.sub("g"),
                Conv2dConfig::new(c, 8, 3)
                    .stride(2)
                    .padding(Padding::Explicit([0, 0, 1, 1])),
                true,
                Activation::Relu6,
                70,
            ),
        ),
    ];
    let mut relu6_clipped = false;
    for (tag, l) in cases {
        let act = l.act;
        let layer = Layer::ConvBnAct(l);
        for (i, &(h, w)) in SIZES.iter().enumerate() {
            let x = input(c, h, w, 100 + i as u32);
            check_fp32(&format!("{tag} {h}x{w}"), &layer, &x);
            if act == Activation::Relu6 {
                let y = tch::no_grad(|| layer.forward(&x, false));
                relu6_clipped |= y.eq(6.0).any().int64_value(&[]) != 0;
            }
        }
    }
    assert!(relu6_clipped, "the inputs should reach the ReLU6 ceiling");
}

#[test]
fn inverted_residual_blocks_match_tch() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = Scope::root(&vs.root());
    let c = 8;
    let with_expand = InvertedResidual {
        expand: Some(conv_layer(
            &root.sub("x0"),
            Conv2dConfig::new(c, 24, 1),
            true,
            Activation::Relu6,
            200,
        )),
        depthwise: conv_layer(
            &root.sub("x1"),
            Conv2dConfig::new(24, 24, 3)
                .padding(Padding::TfSame)
                .depthwise(),
            true,
            Activation::Relu6,
            210,
        ),
        project: conv_layer(
            &root.sub("x2"),
            Conv2dConfig::new(24, c, 1),
            true,
            Activation::None,
            220,
        ),
        residual: true,
    };
    let strided = InvertedResidual {
        expand: None,
        depthwise: conv_layer(
            &root.sub("y1"),
            Conv2dConfig::new(c, c, 5)
                .stride(2)
                .padding(Padding::TfSame)
                .depthwise(),
            true,
            Activation::Relu,
            230,
        ),
        project: conv_layer(
            &root.sub("y2"),
            Conv2dConfig::new(c, 16, 1),
            true,
            Activation::None,
            240,
        ),
        residual: false,
    };
    for (tag, block) in [
        ("expansion, depthwise, projection and shortcut", with_expand),
        ("depthwise stride 2 and projection", strided),
    ] {
        let layer = Layer::InvertedResidual(Box::new(block));
        for (i, &(h, w)) in SIZES.iter().enumerate() {
            check_fp32(
                &format!("inverted residual: {tag} {h}x{w}"),
                &layer,
                &input(c, h, w, 300 + i as u32),
            );
        }
    }
}

#[test]
fn pools_and_the_linear_layer_match_tch() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = Scope::root(&vs.root());
    let c = 8;
    for (tag, pool) in [
        ("max pool 3x3 stride 2 pads 1", MaxPool2d::new(3, 2, 1)),
        ("max pool 2x2 stride 2", MaxPool2d::new(2, 2, 0)),
    ] {
        let layer = Layer::MaxPool2d(pool);
        for (i, &(h, w)) in SIZES.iter().enumerate() {
            check_fp32(
                &format!("{tag} {h}x{w}"),
                &layer,
                &input(c, h, w, 400 + i as u32),
            );
        }
    }
    let gap = Layer::GlobalAvgPool(GlobalAvgPool);
    for (i, &(h, w)) in SIZES.iter().enumerate() {
        check_fp32(
            &format!("global average pool {h}x{w}"),
            &gap,
            &input(c, h, w, 500 + i as u32),
        );
    }
    let linear = Linear::new(&root.sub("fc"), c * 3 * 4, 10, true);
    set(&linear.weight, &det(&[10, c * 12], 600, 0.5, 0.02));
    set(linear.bias.as_ref().unwrap(), &det(&[10], 601, 1.0, 0.0));
    check_fp32(
        "linear on a flattened [1, 8, 3, 4]",
        &Layer::Linear(linear),
        &input(c, 3, 4, 602),
    );
}

#[test]
fn int8_conv_matches_its_tch_simulation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = Scope::root(&vs.root());
    let c = 8;
    let cases = [
        (
            "dense 3x3 stride 2 TF SAME, BatchNorm, ReLU6",
            conv_layer(
                &root.sub("q0"),
                Conv2dConfig::new(c, 16, 3)
                    .stride(2)
                    .padding(Padding::TfSame),
                true,
                Activation::Relu6,
                700,
            ),
        ),
        (
            "pointwise 1x1, BatchNorm, no activation",
            conv_layer(
                &root.sub("q1"),
                Conv2dConfig::new(c, 12, 1),
                true,
                Activation::None,
                710,
            ),
        ),
    ];
    for (tag, l) in cases {
        let name = l.conv.name.clone();
        let layer = Layer::ConvBnAct(l);
        let Layer::ConvBnAct(l) = &layer else {
            unreachable!()
        };
        for (i, &(h, w)) in SIZES.iter().enumerate() {
            let tag = format!("int8 {tag} {h}x{w}");
            let x = input(c, h, w, 800 + i as u32);
            let fp32 = tch::no_grad(|| l.forward(&x, false));
            let range = |t: &Tensor| Range {
                min: t.min().double_value(&[]) as f32,
                max: t.max().double_value(&[]) as f32,
            };
            let ranges = ConvRanges {
                input: range(&x),
                output: range(&fp32),
            };
            let q = QuantConv::new(l, &ranges).unwrap();
            let quant = BTreeMap::from([(name.clone(), q.clone())]);
            let int8 = HashSet::from([name.clone()]);
            let plan = Int8Plan {
                quant: &quant,
                int8: &int8,
            };
            let (model, fp32_convs, last_step) =
                op_model(&layer, c as usize, &out_dims(&fp32), Some(plan));
            assert!(fp32_convs.is_empty(), "{tag}: {fp32_convs:?}");
            assert_eq!(last_step, Some(q.y.scale), "{tag}");
            let ops: Vec<&str> = model
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .map(|n| n.op_type.as_str())
                .collect();
            assert!(ops.contains(&"QLinearConv"), "{tag}: {ops:?}");
            let got = run_tract(&tag, &model, &x);
            let sim = tch::no_grad(|| l.simulate_int8(&q, &x));
            let sim = (
                sim.size().iter().map(|&d| d as usize).collect::<Vec<_>>(),
                onnx::tensor_f32(&sim).unwrap(),
            );
            let d = export::max_abs_diff(&sim, &got).unwrap();
            // The gate: one output step (f32 accumulation in the simulation vs int32 in
            // QLinearConv can put a value on the other side of a rounding boundary) plus the f32
            // rounding of the two dequantized values compared.
            let step = q.y.scale as f64;
            let max_abs = sim
                .1
                .iter()
                .chain(&got.1)
                .fold(0f64, |m, v| m.max(v.abs() as f64));
            let gate = step + f32::EPSILON as f64 * max_abs;
            let levels: HashSet<i64> = got
                .1
                .iter()
                .map(|v| (v / q.y.scale).round() as i64)
                .collect();
            println!(
                "{tag}: simulation vs tract {:.3} output steps, {} output levels",
                d / step,
                levels.len()
            );
            assert!(d <= gate, "{tag}: {d} > gate {gate} (step {step})");
            assert!(
                levels.len() > 20,
                "{tag}: only {} output levels",
                levels.len()
            );
        }
        // A conv the plan quantizes without a quantized form is a clear error.
        let empty = BTreeMap::new();
        let int8 = HashSet::from([name.clone()]);
        let mut e = Emitter::new(
            GraphBuilder::new("op"),
            Some(Int8Plan {
                quant: &empty,
                int8: &int8,
            }),
        );
        let err = layer.emit(&mut e, "x", 0).unwrap_err().to_string();
        assert!(
            err.contains(&name) && err.contains("no calibration range"),
            "{err}"
        );
    }
}
