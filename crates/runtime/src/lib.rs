//! `fss-runtime`: bundles loaded through an [`InferenceBackend`] (tract by default), the
//! encoder adapter [`BundleEncoder`] that the evaluation harness and the CLI use, and the
//! support path ([`support`]) that turns support images and masks into PANet prototypes.
//!
//! ```no_run
//! use fss_runtime::BundleEncoder;
//! # fn main() -> fss_core::Result<()> {
//! let mut enc = BundleEncoder::open(std::path::Path::new("models/default"))?;
//! let size = enc.default_size();
//! let img = fss_core::image_io::load_rgb(std::path::Path::new("frame.jpg"))?;
//! let features = enc.encode_image(&img, size)?; // FeatureMap [C, h, w]
//! # let _ = features; Ok(()) }
//! ```
//!
//! Every failure is an [`EdgeError`] that renders as one line naming the file; tract panics
//! while loading or running a graph are caught and converted ([`guarded`]).

pub mod cache;
pub mod support;
pub mod tract_backend;

pub use support::{compute_prototypes, SupportShotSpec, TargetSpec};
pub use tract_backend::TractBackend;

use fss_core::bundle::{sha256_file, Dim, GraphSpec, Manifest, TensorSpec, MANIFEST_FILE};
use fss_core::choice::Choice;
use fss_core::dpnet::SupportMemory;
use fss_core::error::{EdgeError, Result};
pub use fss_core::method::HeadInputs;
use fss_core::method::{HeadContract, HeadRunner, Method, MethodOptions, SupportState};
use fss_core::model::{FeatureEncoder, ScoringInput};
use fss_core::preprocess::{prepare_input, InputSize, Normalization};
use fss_core::prototype::SupportShot;
use fss_core::sgone::SgOneKShot;
use fss_core::smcp::SmcpGuidance;
use fss_core::tensor::FeatureMap;
use image::RgbImage;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// An owned f32 tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A borrowed f32 tensor given to [`InferenceBackend::run`].
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl<'a> TensorRef<'a> {
    pub fn new(shape: &'a [usize], data: &'a [f32]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(EdgeError::input(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(TensorRef { shape, data })
    }
}

/// Name and declared shape of a graph input or output, as written in the graph file
/// (`None`: the graph declares no shape).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphPort {
    pub name: String,
    pub dims: Option<Vec<Dim>>,
}

/// Runs one graph on f32 tensors. Implementations load the graph once, pin the input shapes
/// they are asked for and optimize once per set of shapes (design.md, "Inference backends").
pub trait InferenceBackend: Send {
    /// Short backend name (`"tract"`).
    fn name(&self) -> &'static str;
    /// The graph file.
    fn graph_path(&self) -> &Path;
    /// The graph's real inputs (initializers excluded), in order.
    fn inputs(&self) -> &[GraphPort];
    /// The graph's outputs, in order.
    fn outputs(&self) -> &[GraphPort];
    /// Pins the input shapes and builds (or reuses) the optimized plan for them. Returns the
    /// output shapes where the backend knows them statically.
    fn prepare(&mut self, input_shapes: &[Vec<usize>]) -> Result<Vec<Option<Vec<usize>>>>;
    /// Runs the graph (preparing for the inputs' shapes first when needed).
    fn run(&mut self, inputs: &[TensorRef<'_>]) -> Result<Vec<F32Tensor>>;
}

thread_local! {
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}
static PANIC_HOOK: Once = Once::new();

/// Runs `f`, converting a panic inside it into an error naming `path` (the last line of
/// defence against malformed graphs: tract can panic on some). The panic message is not
/// printed; other threads' panics are reported as usual.
pub fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(EdgeError::invalid(
                path,
                format!("{what} failed (tract panicked: {})", one_line(&msg)),
            ))
        }
    }
}

/// Collapses a message to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn dims_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => v.to_string(),
            Dim::Symbol(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A bundle folder: its manifest, its identity hash and its graph files' hashes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 (hex) over the manifest file's bytes and the graph files' sha256: the key of
    /// everything cached for this bundle.
    pub hash: String,
    /// sha256 of the encoder graph file as found on disk.
    pub encoder_sha256: String,
    /// sha256 of the head graph file, if there is one.
    pub head_sha256: Option<String>,
}

impl Bundle {
    /// Reads and checks `dir/bundle.json` (format, precision, graph files present, the shapes
    /// of the encoder's input and output as the runtime needs them) and hashes the files.
    pub fn open(dir: &Path) -> Result<Bundle> {
        let manifest = Manifest::read(dir)?;
        let mpath = dir.join(MANIFEST_FILE);
        check_manifest(&mpath, &manifest)?;
        let manifest_bytes = std::fs::read(&mpath).map_err(|e| EdgeError::io(&mpath, e))?;
        let encoder_sha256 = sha256_file(&Manifest::graph_path(dir, &manifest.graphs.encoder))?;
        let head_sha256 = match &manifest.graphs.head {
            Some(h) => Some(sha256_file(&Manifest::graph_path(dir, h))?),
            None => None,
        };
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"edge-bundle-v1\0");
        h.update(&manifest_bytes);
        h.update(b"\0encoder\0");
        h.update(encoder_sha256.as_bytes());
        if let Some(s) = &head_sha256 {
            h.update(b"\0head\0");
            h.update(s.as_bytes());
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            hash: format!("{:x}", h.finalize()),
            encoder_sha256,
            head_sha256,
        })
    }

    pub fn encoder_path(&self) -> PathBuf {
        Manifest::graph_path(&self.dir, &self.manifest.graphs.encoder)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The manifest's default input size.
    pub fn default_size(&self) -> InputSize {
        self.manifest.input.size()
    }

    pub fn normalization(&self) -> Normalization {
        self.manifest.input.normalization()
    }

    /// The bundle's method, if this edge runs it, with the head graph its contract needs
    /// ([`fss_core::method`]): PANet (cosine scoring in Rust, no head graph), SMCP, SG-One and
    /// DPNet (a head graph).
    pub fn method(&self) -> Result<Method> {
        let m = &self.manifest;
        let unsupported = || {
            EdgeError::invalid(
                &self.manifest_path(),
                format!(
                    "method '{}' (prototype kind '{}') is not supported by this edge: it runs {} bundles",
                    m.method,
                    m.prototype.kind,
                    Method::VARIANTS
                        .iter()
                        .map(|(_, name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        let method = Method::from_name(&m.method).ok_or_else(unsupported)?;
        match (method.head(), m.graphs.head.is_some()) {
            (None, false) if m.prototype.kind == m.method => Ok(method),
            (Some(_), true) => Ok(method),
            (Some(_), false) => Err(EdgeError::invalid(
                &self.manifest_path(),
                format!(
                    "method '{}' needs a head graph, but graphs.head is null",
                    m.method
                ),
            )),
            _ => Err(unsupported()),
        }
    }

    /// Errors unless [`Bundle::method`] knows the bundle's method.
    pub fn require_supported_method(&self) -> Result<()> {
        self.method().map(|_| ())
    }

    pub fn head_path(&self) -> Option<PathBuf> {
        self.manifest
            .graphs
            .head
            .as_ref()
            .map(|h| Manifest::graph_path(&self.dir, h))
    }

    /// Errors if a graph file on disk (encoder, head) differs from the one the manifest names.
    pub fn verify_graph_hashes(&self) -> Result<()> {
        let graphs = &self.manifest.graphs;
        let mut pairs = vec![(
            &graphs.encoder.sha256,
            self.encoder_path(),
            self.encoder_sha256.as_str(),
        )];
        if let (Some(h), Some(path), Some(got)) =
            (&graphs.head, self.head_path(), &self.head_sha256)
        {
            pairs.push((&h.sha256, path, got.as_str()));
        }
        for (want, path, got) in pairs {
            if !want.is_empty() && !want.eq_ignore_ascii_case(got) {
                return Err(EdgeError::invalid(
                    &path,
                    format!(
                        "sha256 {} differs from the {} recorded in {MANIFEST_FILE}: the graph was changed or damaged after export",
                        short(got),
                        short(want)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The first 12 characters of a hash (any string: it may come from a damaged file).
fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// Shape facts of the manifest the runtime relies on.
fn check_manifest(path: &Path, m: &Manifest) -> Result<()> {
    let bad = |msg: String| Err(EdgeError::invalid(path, msg));
    if m.input.height == 0 || m.input.width == 0 {
        return bad(format!(
            "input size {}x{} is empty",
            m.input.height, m.input.width
        ));
    }
    if m.input.std.iter().any(|s| !s.is_finite() || *s == 0.0)
        || m.input.mean.iter().any(|v| !v.is_finite())
    {
        return bad("input mean/std must be finite and std non-zero".into());
    }
    if m.feature.stride == 0 || m.feature.channels == 0 {
        return bad(format!(
            "feature stride {} and channels {} must be positive",
            m.feature.stride, m.feature.channels
        ));
    }
    let enc = &m.graphs.encoder;
    if enc.inputs.len() != 1 {
        return bad(format!(
            "graphs.encoder has {} inputs; the encoder takes one image",
            enc.inputs.len()
        ));
    }
    if enc.outputs.is_empty() {
        return bad("graphs.encoder lists no outputs".into());
    }
    let inp = &enc.inputs[0];
    let ok_in = inp.shape.len() == 4
        && matches!(inp.shape[0], Dim::Fixed(1) | Dim::Symbol(_))
        && inp.shape[1] == Dim::Fixed(3);
    if !ok_in {
        return bad(format!(
            "graphs.encoder input '{}' is {}; expected [1, 3, H, W]",
            inp.name,
            dims_text(&inp.shape)
        ));
    }
    let out = &enc.outputs[0];
    if out.shape.len() != 4 {
        return bad(format!(
            "graphs.encoder output '{}' is {}; expected [1, C, h, w]",
            out.name,
            dims_text(&out.shape)
        ));
    }
    if let Dim::Fixed(c) = out.shape[1] {
        if c != m.feature.channels {
            return bad(format!(
                "graphs.encoder output '{}' has {c} channels but feature.channels is {}",
                out.name, m.feature.channels
            ));
        }
    }
    Ok(())
}

/// Checks a graph port against its manifest spec: name, rank and the dims fixed on both sides.
fn check_port(graph: &Path, kind: &str, port: &GraphPort, spec: &TensorSpec) -> Result<()> {
    if let Some(dims) = &port.dims {
        if dims.len() != spec.shape.len() {
            return Err(EdgeError::invalid(
                graph,
                format!(
                    "graph {kind} '{}' has rank {} ({}) but {MANIFEST_FILE} says {}",
                    port.name,
                    dims.len(),
                    dims_text(dims),
                    dims_text(&spec.shape)
                ),
            ));
        }
        for (i, (g, s)) in dims.iter().zip(&spec.shape).enumerate() {
            if let (Dim::Fixed(a), Dim::Fixed(b)) = (g, s) {
                if a != b {
                    return Err(EdgeError::invalid(
                        graph,
                        format!(
                            "graph {kind} '{}' is {} but {MANIFEST_FILE} says {} (dimension {i}: {a} vs {b})",
                            port.name,
                            dims_text(dims),
                            dims_text(&spec.shape)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The encoder of a bundle over an [`InferenceBackend`]: pins the input size, checks what the
/// graph produces against the manifest, and returns [`FeatureMap`]s.
pub struct BundleEncoder {
    bundle: Bundle,
    backend: Box<dyn InferenceBackend>,
    output_index: usize,
    /// Sizes whose output shape has been checked.
    checked: Vec<InputSize>,
    method: Method,
    /// The method's head graph (none for PANet).
    head: Option<HeadGraph>,
    options: MethodOptions,
}

/// A prototype-conditioned head graph: query features `[1, C, h, w]`, a prototype `[1, D]`
/// and for DPNet the support memory (ports named in the manifest, in its order) -> logits
/// `[1, 2, h, w]` (the manifest's first output) and for SG-One the guidance features
/// `[1, D, h, w]` (its second output).
pub struct HeadGraph {
    backend: Box<dyn InferenceBackend>,
    channels: usize,
    /// Length of the prototype (C for SMCP and DPNet; the guidance width for SG-One).
    prototype_dim: usize,
    /// For each manifest input (in manifest order), its position among the graph's inputs.
    positions: Vec<usize>,
    output_index: usize,
    guidance_index: Option<usize>,
}

impl HeadGraph {
    /// Checks the graph's ports against the manifest's head spec: `inputs` as listed, and
    /// `outputs` outputs (1: logits; 2: logits and guidance features).
    pub fn new(
        backend: Box<dyn InferenceBackend>,
        spec: &GraphSpec,
        channels: usize,
        contract: HeadContract,
    ) -> Result<HeadGraph> {
        let HeadContract { inputs, outputs } = contract;
        let graph = backend.graph_path().to_path_buf();
        let names: Vec<&str> = backend.inputs().iter().map(|p| p.name.as_str()).collect();
        let bad = |msg: String| Err(EdgeError::invalid(&graph, msg));
        if spec.inputs.len() != inputs.count() || spec.outputs.len() < outputs {
            return bad(format!(
                "{MANIFEST_FILE} graphs.head must name {} inputs ({}) and {outputs} output(s); it names {} and {}",
                inputs.count(),
                inputs.names(),
                spec.inputs.len(),
                spec.outputs.len()
            ));
        }
        let mut positions = Vec::new();
        for s in &spec.inputs {
            match backend.inputs().iter().position(|p| p.name == s.name) {
                Some(i) => {
                    check_port(&graph, "input", &backend.inputs()[i], s)?;
                    positions.push(i)
                }
                None => {
                    return bad(format!(
                        "graph inputs are {names:?}; {MANIFEST_FILE} names '{}'",
                        s.name
                    ))
                }
            }
        }
        if backend.inputs().len() != inputs.count() {
            return bad(format!(
                "the head graph has inputs {names:?}; expected {} ({})",
                inputs.count(),
                inputs.names()
            ));
        }
        let prototype_dim = match spec.inputs[1].shape.as_slice() {
            [_, Dim::Fixed(d)] => *d,
            _ => {
                return bad(format!(
                    "{MANIFEST_FILE} graphs.head input '{}' must be [1, D] with a fixed D",
                    spec.inputs[1].name
                ))
            }
        };
        let mut output_indices = Vec::new();
        for out in &spec.outputs[..outputs] {
            let i = backend
                .outputs()
                .iter()
                .position(|p| p.name == out.name)
                .ok_or_else(|| {
                    EdgeError::invalid(
                        &graph,
                        format!("the head graph has no output '{}'", out.name),
                    )
                })?;
            check_port(&graph, "output", &backend.outputs()[i], out)?;
            output_indices.push(i);
        }
        Ok(HeadGraph {
            backend,
            channels,
            prototype_dim,
            positions,
            output_index: output_indices[0],
            guidance_index: output_indices.get(1).copied(),
        })
    }

    /// Runs the graph on `inputs` given in manifest order.
    fn run_ordered(&mut self, inputs: &[TensorRef<'_>]) -> Result<Vec<F32Tensor>> {
        let mut ordered = inputs.to_vec();
        for (m, &g) in self.positions.iter().enumerate() {
            ordered[g] = inputs[m];
        }
        let outs = self.backend.run(&ordered)?;
        let need = self.output_index.max(self.guidance_index.unwrap_or(0));
        if need >= outs.len() {
            return Err(EdgeError::invalid(
                self.backend.graph_path(),
                format!("the head graph returned {} outputs", outs.len()),
            ));
        }
        Ok(outs)
    }

    fn check_inputs(&self, query: &FeatureMap, prototype: &[f32]) -> Result<()> {
        if query.channels != self.channels || prototype.len() != self.prototype_dim {
            return Err(EdgeError::input(format!(
                "the head takes {}-channel features and {}-value prototypes; got {} and {}",
                self.channels,
                self.prototype_dim,
                query.channels,
                prototype.len()
            )));
        }
        Ok(())
    }

    /// One pass: logits `[2, h, w]` (and the raw outputs, for the guidance features).
    fn pass_with(
        &mut self,
        query: &FeatureMap,
        prototype: &[f32],
        memory: Option<&SupportMemory>,
    ) -> Result<(FeatureMap, Vec<F32Tensor>)> {
        self.check_inputs(query, prototype)?;
        let fshape = [1, self.channels, query.height, query.width];
        let pshape = [1, self.prototype_dim];
        let mut inputs = vec![
            TensorRef::new(&fshape, &query.data)?,
            TensorRef::new(&pshape, prototype)?,
        ];
        let (mf, mm);
        if self.positions.len() == 4 {
            let m = memory.ok_or_else(|| {
                EdgeError::input("the DPNet head needs the target's support memory")
            })?;
            if m.channels != self.channels || m.features.len() != m.channels * m.locations {
                return Err(EdgeError::input(format!(
                    "a support memory of {} channels x {} locations ({} values) does not fit a {}-channel head",
                    m.channels,
                    m.locations,
                    m.features.len(),
                    self.channels
                )));
            }
            mf = [1, self.channels, m.locations];
            mm = [1, m.locations];
            inputs.push(TensorRef::new(&mf, &m.features)?);
            inputs.push(TensorRef::new(&mm, &m.mask)?);
        }
        let mut outs = self.run_ordered(&inputs)?;
        let out = std::mem::replace(
            &mut outs[self.output_index],
            F32Tensor {
                shape: vec![],
                data: vec![],
            },
        );
        if out.shape != [1, 2, query.height, query.width] {
            return Err(EdgeError::invalid(
                self.backend.graph_path(),
                format!(
                    "the head graph returned {:?} for {}x{} features (expected [1, 2, {}, {}])",
                    out.shape, query.height, query.width, query.height, query.width
                ),
            ));
        }
        Ok((
            FeatureMap::new(2, query.height, query.width, out.data)?,
            outs,
        ))
    }
}

impl HeadRunner for HeadGraph {
    fn pass(
        &mut self,
        query: &FeatureMap,
        prototype: &[f32],
        memory: Option<&SupportMemory>,
    ) -> Result<FeatureMap> {
        Ok(self.pass_with(query, prototype, memory)?.0)
    }

    fn guidance(&mut self, features: &FeatureMap) -> Result<FeatureMap> {
        let gi = self.guidance_index.ok_or_else(|| {
            EdgeError::invalid(
                self.backend.graph_path(),
                "the head graph has no guidance output",
            )
        })?;
        // The guidance features do not depend on the vector: any vector will do.
        let zeros = vec![0f32; self.prototype_dim];
        let (_, mut outs) = self.pass_with(features, &zeros, None)?;
        let g = std::mem::replace(
            &mut outs[gi],
            F32Tensor {
                shape: vec![],
                data: vec![],
            },
        );
        if g.shape != [1, self.prototype_dim, features.height, features.width] {
            return Err(EdgeError::invalid(
                self.backend.graph_path(),
                format!(
                    "the head graph's guidance output is {:?} for {}x{} features (expected [1, {}, {}, {}])",
                    g.shape,
                    features.height,
                    features.width,
                    self.prototype_dim,
                    features.height,
                    features.width
                ),
            ));
        }
        FeatureMap::new(self.prototype_dim, features.height, features.width, g.data)
    }
}

impl BundleEncoder {
    /// Opens `dir` with the tract backend: reads the manifest, loads the encoder graph,
    /// checks its inputs and outputs against the manifest and the file's sha256.
    pub fn open(dir: &Path) -> Result<BundleEncoder> {
        let bundle = Bundle::open(dir)?;
        let backend = TractBackend::open(&bundle.encoder_path())?;
        bundle.verify_graph_hashes()?;
        BundleEncoder::with_backend(bundle, Box::new(backend))
    }

    /// An encoder over any backend already loaded with the bundle's encoder graph (an SMCP
    /// bundle's head graph is loaded with tract).
    pub fn with_backend(
        bundle: Bundle,
        backend: Box<dyn InferenceBackend>,
    ) -> Result<BundleEncoder> {
        let method = bundle.method()?;
        let head = match (
            method.head(),
            bundle.head_path(),
            &bundle.manifest.graphs.head,
        ) {
            (Some(contract), Some(path), Some(spec)) => Some(HeadGraph::new(
                Box::new(TractBackend::open(&path)?),
                spec,
                bundle.manifest.feature.channels,
                contract,
            )?),
            _ => None,
        };
        let options = MethodOptions {
            panet_scale: bundle.manifest.prototype.scale,
            ..MethodOptions::default()
        };
        let spec = &bundle.manifest.graphs.encoder;
        let graph = backend.graph_path().to_path_buf();
        let in_spec = &spec.inputs[0];
        let names: Vec<&str> = backend.inputs().iter().map(|p| p.name.as_str()).collect();
        if backend.inputs().len() != 1 || backend.inputs()[0].name != in_spec.name {
            return Err(EdgeError::invalid(
                &graph,
                format!(
                    "graph inputs are {names:?} but {MANIFEST_FILE} names one input '{}'",
                    in_spec.name
                ),
            ));
        }
        check_port(&graph, "input", &backend.inputs()[0], in_spec)?;
        let out_spec = &spec.outputs[0];
        let output_index = backend
            .outputs()
            .iter()
            .position(|p| p.name == out_spec.name)
            .ok_or_else(|| {
                let names: Vec<&str> = backend.outputs().iter().map(|p| p.name.as_str()).collect();
                EdgeError::invalid(
                    &graph,
                    format!(
                        "graph outputs are {names:?}; {MANIFEST_FILE} names '{}'",
                        out_spec.name
                    ),
                )
            })?;
        check_port(&graph, "output", &backend.outputs()[output_index], out_spec)?;
        Ok(BundleEncoder {
            bundle,
            backend,
            output_index,
            checked: Vec::new(),
            method,
            head,
            options,
        })
    }

    /// The bundle's method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Which prototype guides an SMCP bundle's final pass (no effect on other bundles).
    pub fn set_smcp_guidance(&mut self, g: SmcpGuidance) {
        self.options.smcp_guidance = g;
    }

    /// How an SG-One bundle combines K shots (no effect on other bundles).
    pub fn set_sgone_kshot(&mut self, k: SgOneKShot) {
        self.options.sgone_kshot = k;
    }

    /// The head graph as the method's [`HeadRunner`] (none for PANet).
    fn runner(&mut self) -> Option<&mut dyn HeadRunner> {
        self.head.as_mut().map(|h| h as &mut dyn HeadRunner)
    }

    /// The method's prototypes of N targets of K shots holding encoder features
    /// ([`Method::prototypes`]).
    pub fn prototypes(&mut self, ways: &[Vec<SupportShot>]) -> Result<SupportState> {
        let method = self.method;
        method.prototypes(self.runner(), ways)
    }

    /// The features a support's prototype is pooled from (SG-One: the head's guidance
    /// features; every other method: the encoder features themselves).
    pub fn support_features(&mut self, features: FeatureMap) -> Result<FeatureMap> {
        let method = self.method;
        method.support_features(self.runner(), features)
    }

    /// Length of the method's prototypes: the feature channels, or SG-One's guidance width.
    pub fn prototype_dim(&self) -> usize {
        match &self.head {
            Some(graph) if self.method.pools_guidance() => graph.prototype_dim,
            _ => self.bundle.manifest.feature.channels,
        }
    }

    /// Whether a support shot also keeps a support memory (DPNet).
    pub fn keeps_support_memory(&self) -> bool {
        self.method.keeps_support_memory()
    }

    /// The method's logits `[N + 1, h, w]` at feature resolution for query `features` encoded
    /// at `input` ([`Method::logits`]).
    pub fn head_logits(
        &mut self,
        support: &SupportState,
        features: &FeatureMap,
        input: InputSize,
    ) -> Result<FeatureMap> {
        let (method, options) = (self.method, self.options);
        method.logits(self.runner(), &options, support, features, input)
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn default_size(&self) -> InputSize {
        self.bundle.default_size()
    }

    /// What the shared scoring needs at `size` (the manifest's normalization).
    pub fn scoring_input(&self, size: InputSize) -> ScoringInput {
        ScoringInput {
            size,
            normalization: self.bundle.normalization(),
        }
    }

    /// The shape `[1, 3, H, W]` of the encoder input at `size`.
    pub fn input_shape(size: InputSize) -> Vec<usize> {
        vec![1, 3, size.height, size.width]
    }

    /// Pins the encoder to `size` (optimizing it once per size) and checks the output shape
    /// the backend reports against the manifest.
    pub fn prepare(&mut self, size: InputSize) -> Result<()> {
        if self.checked.contains(&size) {
            return Ok(());
        }
        let shapes = self.backend.prepare(&[Self::input_shape(size)])?;
        if let Some(Some(shape)) = shapes.get(self.output_index) {
            self.check_output(shape, size)?;
            self.checked.push(size);
        }
        Ok(())
    }

    /// Checks an actual output shape: `[1, channels, ~H/stride, ~W/stride]` (floor or ceil),
    /// and the dimensions the manifest fixes.
    fn check_output(&self, shape: &[usize], size: InputSize) -> Result<()> {
        let m = &self.bundle.manifest;
        let spec = &m.graphs.encoder.outputs[0];
        let graph = self.backend.graph_path();
        let s = m.feature.stride;
        let fits = |got: usize, full: usize| got == full / s || got == full.div_ceil(s);
        let ok = shape.len() == 4
            && shape[0] == 1
            && shape[1] == m.feature.channels
            && fits(shape[2], size.height)
            && fits(shape[3], size.width)
            && spec
                .shape
                .iter()
                .zip(shape)
                .all(|(d, &v)| !matches!(d, Dim::Fixed(f) if *f != v));
        if !ok {
            return Err(EdgeError::invalid(
                graph,
                format!(
                    "graph output '{}' is {shape:?} for a {size} input, but {MANIFEST_FILE} says {} with feature.channels {} and stride {s} (expected [1, {}, {}, {}])",
                    spec.name,
                    dims_text(&spec.shape),
                    m.feature.channels,
                    m.feature.channels,
                    size.height.div_ceil(s),
                    size.width.div_ceil(s)
                ),
            ));
        }
        Ok(())
    }

    /// Encodes one preprocessed image (CHW f32 at `size`, see [`prepare_input`]).
    pub fn encode(&mut self, input: &[f32], size: InputSize) -> Result<FeatureMap> {
        self.prepare(size)?;
        let shape = Self::input_shape(size);
        let t = TensorRef::new(&shape, input)?;
        let mut outs = self.backend.run(&[t])?;
        if self.output_index >= outs.len() {
            return Err(EdgeError::invalid(
                self.backend.graph_path(),
                format!("graph returned {} outputs", outs.len()),
            ));
        }
        let out = outs.swap_remove(self.output_index);
        // Cheap, and it keeps a graph that changes its mind from ever indexing out of range.
        self.check_output(&out.shape, size)?;
        if !self.checked.contains(&size) {
            self.checked.push(size);
        }
        FeatureMap::new(out.shape[1], out.shape[2], out.shape[3], out.data)
    }

    /// Preprocesses `image` with the manifest's normalization at `size` and encodes it.
    pub fn encode_image(&mut self, image: &RgbImage, size: InputSize) -> Result<FeatureMap> {
        let input = prepare_input(image, size, &self.bundle.normalization());
        self.encode(&input, size)
    }
}

impl FeatureEncoder for BundleEncoder {
    fn encode_batch(&mut self, inputs: &[Vec<f32>], size: InputSize) -> Result<Vec<FeatureMap>> {
        inputs.iter().map(|i| self.encode(i, size)).collect()
    }

    fn head_logits(
        &mut self,
        support: &SupportState,
        query: &FeatureMap,
        input: InputSize,
    ) -> Result<FeatureMap> {
        BundleEncoder::head_logits(self, support, query, input)
    }

    fn prototypes(&mut self, ways: &[Vec<SupportShot>]) -> Result<SupportState> {
        BundleEncoder::prototypes(self, ways)
    }
}

/// Sets tract's matrix-product executor: `n <= 1` single-threaded (tract's default), else a
/// rayon pool of `n` threads (tract-linalg `multithread-mm`). Process-wide.
pub fn set_threads(n: usize) -> Result<()> {
    use tract_onnx::prelude::multithread::{set_default_executor, Executor};
    if n > 1024 {
        return Err(EdgeError::input(format!(
            "--threads {n} is out of range (1..1024)"
        )));
    }
    if n <= 1 {
        set_default_executor(Executor::SingleThread);
        return Ok(());
    }
    let exec = guarded(Path::new("threads"), "creating the thread pool", || {
        Ok(Executor::multithread(n))
    })?;
    set_default_executor(exec);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_turns_panics_into_errors() {
        let e = guarded(Path::new("model.onnx"), "loading", || -> Result<()> {
            panic!("boom\nsecond line")
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("model.onnx") && e.contains("boom second line"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert_eq!(guarded(Path::new("x"), "y", || Ok(3)).unwrap(), 3);
    }
}
