//! The tract backend: parse the ONNX once, then per set of input shapes pin them, optimize
//! and keep the runnable plan (a few sizes are kept; pinned plans run ~1.4x faster than
//! symbolic ones, edge-runtime.md §1.5).

use super::{guarded, one_line, F32Tensor, GraphPort, InferenceBackend, TensorRef};
use fss_core::bundle::Dim;
use fss_core::error::{EdgeError, Result};
use prost::Message;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// How many pinned plans (input sizes) a backend keeps.
pub const MAX_PLANS: usize = 4;

struct Plan {
    shapes: Vec<Vec<usize>>,
    state: TypedSimpleState,
    outputs: Vec<Option<Vec<usize>>>,
}

/// An ONNX graph run by tract.
pub struct TractBackend {
    path: PathBuf,
    model: InferenceModel,
    inputs: Vec<GraphPort>,
    outputs: Vec<GraphPort>,
    /// Most recently used last.
    plans: Vec<Plan>,
}

fn port(v: &pb::ValueInfoProto) -> GraphPort {
    use pb::tensor_shape_proto::dimension::Value;
    let dims = match &v.r#type {
        Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(t)),
            ..
        }) => t.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                    Some(Value::DimParam(p)) => Dim::Symbol(p.clone()),
                    _ => Dim::Symbol("?".into()),
                })
                .collect()
        }),
        _ => None,
    };
    GraphPort {
        name: v.name.clone(),
        dims,
    }
}

fn tract_error(e: &TractError) -> String {
    one_line(&format!("{e:#}"))
}

impl TractBackend {
    /// Reads and parses an ONNX file. Errors (one line, naming the file): unreadable, not a
    /// valid ONNX protobuf (truncated, corrupt), no graph, an ONNX graph tract cannot load.
    pub fn open(path: &Path) -> Result<TractBackend> {
        let bytes = std::fs::read(path).map_err(|e| EdgeError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses ONNX bytes; `path` names them in errors and locates external data.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TractBackend> {
        let invalid =
            |why: String| EdgeError::invalid(path, format!("not a valid ONNX model: {why}"));
        if bytes.is_empty() {
            return Err(invalid("the file is empty".into()));
        }
        let proto = pb::ModelProto::decode(bytes).map_err(|e| invalid(one_line(&e.to_string())))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid("it contains no graph".into()))?;
        if graph.node.is_empty() {
            return Err(invalid("its graph has no nodes".into()));
        }
        if graph.output.is_empty() {
            return Err(invalid("its graph has no outputs".into()));
        }
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<GraphPort> = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .map(port)
            .collect();
        let outputs: Vec<GraphPort> = graph.output.iter().map(port).collect();
        let dir = path
            .parent()
            .and_then(|d| d.to_str())
            .map(|s| s.to_string());
        let model = guarded(path, "loading the ONNX graph", || {
            let onnx = tract_onnx::onnx().with_ignore_value_info(true);
            let parsed = onnx.parse(&proto, dir.as_deref()).map_err(|e| {
                EdgeError::invalid(
                    path,
                    format!("tract cannot load this ONNX graph: {}", tract_error(&e)),
                )
            })?;
            if !parsed.unresolved_inputs.is_empty() {
                return Err(EdgeError::invalid(
                    path,
                    format!(
                        "not a valid ONNX model: unresolved inputs {:?} (missing initializers?)",
                        parsed.unresolved_inputs
                    ),
                ));
            }
            Ok(parsed.model)
        })?;
        let n_in = model.input_outlets().map(|o| o.len()).unwrap_or(0);
        if n_in != inputs.len() {
            return Err(EdgeError::invalid(
                path,
                format!(
                    "tract sees {n_in} graph inputs, the file declares {}",
                    inputs.len()
                ),
            ));
        }
        Ok(TractBackend {
            path: path.to_path_buf(),
            model,
            inputs,
            outputs,
            plans: Vec::new(),
        })
    }

    /// Number of pinned plans currently kept.
    pub fn plan_count(&self) -> usize {
        self.plans.len()
    }

    /// Runs the graph with symbolic input shapes (no pinning): slower, for comparisons and
    /// checks only.
    pub fn run_symbolic(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<F32Tensor>> {
        let values = self.to_values(inputs)?;
        guarded(&self.path, "running the graph", || {
            let plan = self
                .model
                .clone()
                .into_optimized()
                .and_then(|m| m.into_runnable())
                .map_err(|e| {
                    EdgeError::invalid(
                        &self.path,
                        format!("cannot optimize the graph: {}", tract_error(&e)),
                    )
                })?;
            let outs = plan.run(values).map_err(|e| {
                EdgeError::invalid(
                    &self.path,
                    format!("running the graph failed: {}", tract_error(&e)),
                )
            })?;
            self.outputs_from_values(outs)
        })
    }

    fn check_shapes(&self, shapes: &[Vec<usize>]) -> Result<()> {
        if shapes.len() != self.inputs.len() {
            return Err(EdgeError::invalid(
                &self.path,
                format!(
                    "graph has {} inputs, {} given",
                    self.inputs.len(),
                    shapes.len()
                ),
            ));
        }
        for (p, s) in self.inputs.iter().zip(shapes) {
            if let Some(dims) = &p.dims {
                let fixed_ok = dims.len() == s.len()
                    && dims
                        .iter()
                        .zip(s)
                        .all(|(d, v)| !matches!(d, Dim::Fixed(f) if f != v));
                if !fixed_ok {
                    return Err(EdgeError::invalid(
                        &self.path,
                        format!(
                            "graph input '{}' is declared {:?}, cannot run it with shape {s:?}",
                            p.name, dims
                        ),
                    ));
                }
            }
            if s.contains(&0) {
                return Err(EdgeError::input(format!(
                    "input shape {s:?} has an empty dimension"
                )));
            }
        }
        Ok(())
    }

    /// The plan for `shapes`, built if needed; moved to the most-recently-used end.
    fn plan(&mut self, shapes: &[Vec<usize>]) -> Result<&mut Plan> {
        if let Some(pos) = self.plans.iter().position(|p| p.shapes == shapes) {
            let p = self.plans.remove(pos);
            self.plans.push(p);
        } else {
            self.check_shapes(shapes)?;
            let path = self.path.clone();
            let model = self.model.clone();
            let plan = guarded(&path, "optimizing the graph", || {
                let err = |stage: &str, e: TractError| {
                    EdgeError::invalid(
                        &path,
                        format!(
                            "{stage} for input shapes {shapes:?} failed: {}",
                            tract_error(&e)
                        ),
                    )
                };
                let mut model = model;
                for (i, s) in shapes.iter().enumerate() {
                    model
                        .set_input_fact(i, f32::fact(s).into())
                        .map_err(|e| err("pinning the input shape", e))?;
                }
                let typed = model
                    .into_optimized()
                    .map_err(|e| err("optimizing the graph", e))?;
                let n_out = typed.output_outlets().map(|o| o.len()).unwrap_or(0);
                let outputs = (0..n_out)
                    .map(|i| {
                        typed
                            .output_fact(i)
                            .ok()
                            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()))
                    })
                    .collect();
                let runnable = typed
                    .into_runnable()
                    .map_err(|e| err("planning the graph", e))?;
                let state =
                    TypedSimpleState::new(&runnable).map_err(|e| err("planning the graph", e))?;
                Ok(Plan {
                    shapes: shapes.to_vec(),
                    state,
                    outputs,
                })
            })?;
            if self.plans.len() >= MAX_PLANS {
                self.plans.remove(0);
            }
            self.plans.push(plan);
        }
        Ok(self.plans.last_mut().expect("plan just pushed"))
    }

    fn to_values(&self, inputs: &[TensorRef<'_>]) -> Result<TVec<TValue>> {
        inputs
            .iter()
            .map(|t| {
                Tensor::from_shape(t.shape, t.data)
                    .map(|t| t.into_tvalue())
                    .map_err(|e| {
                        EdgeError::input(format!("input tensor {:?}: {}", t.shape, tract_error(&e)))
                    })
            })
            .collect()
    }

    fn outputs_from_values(&self, outs: TVec<TValue>) -> Result<Vec<F32Tensor>> {
        outs.iter()
            .enumerate()
            .map(|(i, o)| {
                let name = self.outputs.get(i).map(|p| p.name.as_str()).unwrap_or("?");
                if o.datum_type() != f32::datum_type() {
                    return Err(EdgeError::invalid(
                        &self.path,
                        format!(
                            "graph output '{name}' is {:?}, expected f32",
                            o.datum_type()
                        ),
                    ));
                }
                let data = o
                    .try_as_plain_ram()
                    .and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()))
                    .map_err(|e| {
                        EdgeError::invalid(
                            &self.path,
                            format!("reading output '{name}': {}", tract_error(&e)),
                        )
                    })?;
                Ok(F32Tensor {
                    shape: o.shape().to_vec(),
                    data,
                })
            })
            .collect()
    }
}

impl InferenceBackend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn graph_path(&self) -> &Path {
        &self.path
    }

    fn inputs(&self) -> &[GraphPort] {
        &self.inputs
    }

    fn outputs(&self) -> &[GraphPort] {
        &self.outputs
    }

    fn prepare(&mut self, input_shapes: &[Vec<usize>]) -> Result<Vec<Option<Vec<usize>>>> {
        Ok(self.plan(input_shapes)?.outputs.clone())
    }

    fn run(&mut self, inputs: &[TensorRef<'_>]) -> Result<Vec<F32Tensor>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.to_vec()).collect();
        let values = self.to_values(inputs)?;
        let path = self.path.clone();
        let plan = self.plan(&shapes)?;
        let outs = guarded(&path, "running the graph", || {
            plan.state.run(values).map_err(|e| {
                EdgeError::invalid(
                    &path,
                    format!("running the graph failed: {}", tract_error(&e)),
                )
            })
        })?;
        self.outputs_from_values(outs)
    }
}
