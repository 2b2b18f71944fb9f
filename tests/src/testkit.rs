//! Tiny ONNX bundles for tests, written from Rust with the protobuf types `tract-onnx` exports.
//!
//! Public (not `cfg(test)`) so that the workspace tests and `host`'s tests can use them too.
//!
//! The test encoder is `Conv(3->8, 3x3, stride 2, pad 1) -> Relu -> Conv(8->C, 3x3, stride 2,
//! pad 1)` with symbolic `H`, `W` (stride 4, output `[1, C, ceil(H/4), ceil(W/4)]`). Its weights
//! are fixed and chosen so that the features carry colour (box-filtered positive and negative
//! parts of each RGB channel), so PANet scoring can tell coloured objects apart on it.
//! [`reference_features`] computes the same network directly in Rust, for parity tests.

use fss_core::bundle::{
    sha256_file, Checks, Dim, FeatureSpec, GraphSpec, Graphs, InputSpec, Manifest, PrototypeSpec,
    Provenance, ResizeSpec, TensorSpec, BUNDLE_FORMAT,
};
use fss_core::preprocess::Normalization;
use fss_core::tensor::FeatureMap;
use prost::Message;
use std::path::Path;
use tract_onnx::pb;

/// Feature channels of the default test encoder.
pub const TEST_CHANNELS: usize = 16;
/// Output stride of the test encoder.
pub const TEST_STRIDE: usize = 4;
/// Channels after the first convolution.
pub const TEST_MID_CHANNELS: usize = 8;
/// File name of the encoder graph in a test bundle.
pub const TEST_ENCODER_FILE: &str = "encoder.onnx";

/// Deterministic pseudo-random values in -0.5..0.5.
fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Weights (OIHW) and bias of both convolutions for `out_channels` output channels.
pub struct TestWeights {
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    pub out_channels: usize,
}

impl TestWeights {
    pub fn new(out_channels: usize) -> TestWeights {
        let mid = TEST_MID_CHANNELS;
        // conv1: channels 0..6 = +/- box filter of R, G, B; 6 = brightness; 7 = random.
        let mut w1 = vec![0.0f32; mid * 3 * 9];
        let rnd = pseudo_random(27, 1);
        for o in 0..mid {
            for i in 0..3 {
                for k in 0..9 {
                    let v = match o {
                        0..=5 => {
                            if i == o / 2 {
                                if o % 2 == 0 {
                                    1.0 / 9.0
                                } else {
                                    -1.0 / 9.0
                                }
                            } else {
                                0.0
                            }
                        }
                        6 => 1.0 / 27.0,
                        _ => rnd[i * 9 + k],
                    };
                    w1[(o * 3 + i) * 9 + k] = v;
                }
            }
        }
        let b1 = (0..mid).map(|o| if o == 6 { 0.1 } else { 0.0 }).collect();
        // conv2: output o < mid = box filter of input o; the rest random mixes.
        let mut w2 = vec![0.0f32; out_channels * mid * 9];
        let rnd = pseudo_random(out_channels * mid * 9, 2);
        for o in 0..out_channels {
            for i in 0..mid {
                for k in 0..9 {
                    let idx = (o * mid + i) * 9 + k;
                    w2[idx] = if o < mid {
                        if i == o {
                            1.0 / 9.0
                        } else {
                            0.0
                        }
                    } else {
                        0.2 * rnd[idx]
                    };
                }
            }
        }
        let b2 = pseudo_random(out_channels, 3)
            .into_iter()
            .map(|v| 0.01 * v)
            .collect();
        TestWeights {
            w1,
            b1,
            w2,
            b2,
            out_channels,
        }
    }
}

fn tensor_proto(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A `ValueInfoProto` of an f32 tensor; `Dim::Symbol` becomes an ONNX `dim_param`.
pub fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Dim::Fixed(v) => Value::DimValue(*v as i64),
                                Dim::Symbol(s) => Value::DimParam(s.clone()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn conv_node(name: &str, input: &str, w: &str, b: &str, output: &str) -> pb::NodeProto {
    pb::NodeProto {
        name: name.to_string(),
        op_type: "Conv".to_string(),
        input: vec![input.to_string(), w.to_string(), b.to_string()],
        output: vec![output.to_string()],
        attribute: vec![
            ints_attr("kernel_shape", &[3, 3]),
            ints_attr("strides", &[2, 2]),
            ints_attr("pads", &[1, 1, 1, 1]),
        ],
        ..Default::default()
    }
}

/// A model proto around `graph` (ir_version 8, opset 17).
pub fn model_proto(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "edge-testkit".to_string(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The test encoder as ONNX bytes: input `image` `[1, 3, H, W]`, output `features`
/// `[1, out_channels, h, w]`.
pub fn test_encoder_onnx(out_channels: usize) -> Vec<u8> {
    let t = TestWeights::new(out_channels);
    let mid = TEST_MID_CHANNELS;
    let graph = pb::GraphProto {
        name: "test_encoder".to_string(),
        node: vec![
            conv_node("conv1", "image", "w1", "b1", "c1"),
            pb::NodeProto {
                name: "relu1".to_string(),
                op_type: "Relu".to_string(),
                input: vec!["c1".to_string()],
                output: vec!["r1".to_string()],
                ..Default::default()
            },
            conv_node("conv2", "r1", "w2", "b2", "features"),
        ],
        initializer: vec![
            tensor_proto("w1", &[mid, 3, 3, 3], &t.w1),
            tensor_proto("b1", &[mid], &t.b1),
            tensor_proto("w2", &[out_channels, mid, 3, 3], &t.w2),
            tensor_proto("b2", &[out_channels], &t.b2),
        ],
        input: vec![value_info(
            "image",
            &[
                Dim::Fixed(1),
                Dim::Fixed(3),
                Dim::Symbol("H".into()),
                Dim::Symbol("W".into()),
            ],
        )],
        output: vec![value_info(
            "features",
            &[
                Dim::Fixed(1),
                Dim::Fixed(out_channels),
                Dim::Symbol("h".into()),
                Dim::Symbol("w".into()),
            ],
        )],
        ..Default::default()
    };
    model_proto(graph).encode_to_vec()
}

/// 3x3 convolution, stride 2, padding 1, CHW in and out.
fn conv3x3_s2(
    input: &[f32],
    cin: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: &[f32],
) -> (Vec<f32>, usize, usize) {
    let cout = bias.len();
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0.0f32; cout * oh * ow];
    for o in 0..cout {
        for y in 0..oh {
            for x in 0..ow {
                let mut acc = bias[o];
                for i in 0..cin {
                    for ky in 0..3 {
                        let iy = (2 * y + ky) as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..3 {
                            let ix = (2 * x + kx) as isize - 1;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            acc += weight[((o * cin + i) * 3 + ky) * 3 + kx]
                                * input[(i * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
                out[(o * oh + y) * ow + x] = acc;
            }
        }
    }
    (out, oh, ow)
}

/// The test encoder computed directly in Rust (CHW input of `height` x `width`).
pub fn reference_features(
    input: &[f32],
    height: usize,
    width: usize,
    out_channels: usize,
) -> FeatureMap {
    assert_eq!(
        input.len(),
        3 * height * width,
        "input must be 3 x height x width"
    );
    let t = TestWeights::new(out_channels);
    let (mut a, h1, w1) = conv3x3_s2(input, 3, height, width, &t.w1, &t.b1);
    a.iter_mut().for_each(|v| *v = v.max(0.0));
    let (b, h2, w2) = conv3x3_s2(&a, TEST_MID_CHANNELS, h1, w1, &t.w2, &t.b2);
    FeatureMap::new(out_channels, h2, w2, b).expect("reference shape")
}

/// The manifest of a test bundle (PANet, fp32) whose encoder file has `sha256`.
pub fn test_manifest(height: usize, width: usize, channels: usize, sha256: String) -> Manifest {
    let norm = Normalization::IMAGENET;
    Manifest {
        format: BUNDLE_FORMAT,
        method: "panet".into(),
        backbone: "testconv".into(),
        input: InputSpec {
            height,
            width,
            mean: norm.mean,
            std: norm.std,
            channel_order: "rgb".into(),
            layout: "nchw".into(),
        },
        feature: FeatureSpec {
            stride: TEST_STRIDE,
            channels,
        },
        graphs: Graphs {
            encoder: GraphSpec {
                file: TEST_ENCODER_FILE.into(),
                inputs: vec![TensorSpec {
                    name: "image".into(),
                    shape: vec![
                        Dim::Fixed(1),
                        Dim::Fixed(3),
                        Dim::Symbol("H".into()),
                        Dim::Symbol("W".into()),
                    ],
                }],
                outputs: vec![TensorSpec {
                    name: "features".into(),
                    shape: vec![
                        Dim::Fixed(1),
                        Dim::Fixed(channels),
                        Dim::Symbol("h".into()),
                        Dim::Symbol("w".into()),
                    ],
                }],
                sha256,
            },
            head: None,
        },
        precision: "fp32".into(),
        quantization: None,
        resize: ResizeSpec {
            mode: "stretch".into(),
            interpolation: "bilinear".into(),
        },
        prototype: PrototypeSpec {
            kind: "panet".into(),
            eps: 1e-5,
            scale: 20.0,
        },
        threshold: None,
        provenance: Provenance {
            data: "none".into(),
            host_version: "testkit".into(),
            source: "crate::testkit".into(),
            ..Provenance::default()
        },
        checks: Checks::default(),
        head: None,
    }
}

/// Writes a test bundle (encoder with [`TEST_CHANNELS`] channels, default input size
/// `height` x `width`) into `dir` (created if needed) and returns its manifest.
/// Panics on I/O errors (it is a test helper).
pub fn write_test_bundle(dir: &Path, height: usize, width: usize) -> Manifest {
    write_test_bundle_with_channels(dir, height, width, TEST_CHANNELS, TEST_CHANNELS)
}

/// Like [`write_test_bundle`], with a graph of `graph_channels` output channels and a manifest
/// that claims `manifest_channels` (different values make a bundle the runtime must refuse).
pub fn write_test_bundle_with_channels(
    dir: &Path,
    height: usize,
    width: usize,
    graph_channels: usize,
    manifest_channels: usize,
) -> Manifest {
    std::fs::create_dir_all(dir).expect("create test bundle folder");
    let graph = dir.join(TEST_ENCODER_FILE);
    std::fs::write(&graph, test_encoder_onnx(graph_channels)).expect("write test encoder");
    let sha = sha256_file(&graph).expect("hash test encoder");
    let m = test_manifest(height, width, manifest_channels, sha);
    m.write(dir).expect("write test manifest");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_has_stride_four() {
        let input = pseudo_random(3 * 10 * 13, 5);
        let f = reference_features(&input, 10, 13, 16);
        assert_eq!((f.channels, f.height, f.width), (16, 3, 4));
    }

    #[test]
    fn onnx_bytes_decode() {
        let bytes = test_encoder_onnx(8);
        let m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 3);
        assert_eq!(g.input[0].name, "image");
    }
}
