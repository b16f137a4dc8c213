//! `Trainer`: a bundle's exported optimizer step and evaluation step over a [`FlaxLayer`],
//! with params, state, optimizer state and RNG key kept on the device between steps
//! (docs/training.md).

mod batch;
mod batch_order;
mod checkpoint;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use batch::{Batch, TrainMetrics};
pub use batch_order::{epoch_batches, epoch_permutation};
pub use checkpoint::{OPT_STATE_FILE, TRAINER_FILE};

use super::computation::{Computation, Names, Sink, Source};
use super::init::relayout;
use super::jax_layer::layout_in;
use super::placement::Layout;
use super::jax_layer::FlaxLayer;
use super::options::{Build, Builder, BundleSource, Options, VariablesSource};
use super::placement::DeviceArray;
use crate::bundle::{Bundle, TrainSpec};
use crate::spec::TensorSpec;
use crate::{Error, Result, Tensor};
use batch::gather_rows;

/// Trains a bundle's model with its exported `train_step` (Keras' trainable `FlaxLayer`).
///
/// Params, state (`batch_stats`, ...), optimizer state and RNG key live on the device and are
/// donated to each step: only the batch goes up and a few scalar metrics come down. The model
/// is a [`FlaxLayer`] ([`Trainer::layer`]), so its variables, key and inference are at hand.
///
/// ```no_run
/// # fn main() -> flaxlayer::Result<()> {
/// use flaxlayer::tensor::read_safetensors;
/// use flaxlayer::Trainer;
/// let data: std::collections::BTreeMap<_, _> = read_safetensors("hlo/digits/data.safetensors")?.into_iter().collect();
/// let mut trainer = Trainer::builder("hlo/digits_train").build()?;
/// for _ in 0..5 {
///     let train = trainer.fit_epoch(&data["x_train"], &data["y_train"])?;
///     let test = trainer.evaluate(&data["x_test"], &data["y_test"])?;
///     println!("loss {:?} test accuracy {:?}", train.loss(), test.accuracy());
/// }
/// trainer.save("target/digits_checkpoint")?;
/// let layer = trainer.to_flax_layer()?; // inference with the trained variables
/// # Ok(())
/// # }
/// ```
pub struct Trainer {
    layer: FlaxLayer,
    spec: TrainSpec,
    shuffle_seed: u64,
    steps: u64,
    batch_size: usize,
    train: Computation,
    eval: Computation,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("bundle", &self.layer.bundle().dir())
            .field("loss", &self.spec.loss)
            .field("optimizer", &self.spec.optimizer)
            .field("batch_size", &self.batch_size)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Where a trainer's optimizer state comes from.
enum OptStart {
    /// `init_opt_state(params)`.
    Fresh,
    /// A checkpoint's.
    Saved(Vec<(String, Tensor)>),
}

impl super::options::sealed::Sealed for Trainer {}

impl Build for Trainer {
    fn build(bundle: Arc<Bundle>, options: Options) -> Result<Trainer> {
        Trainer::assemble(bundle, options, OptStart::Fresh, 0)
    }
}

impl Trainer {
    /// Starts building a trainer over a bundle with a `train` section (the exporter's
    /// `export_train_step`). The builder's options are those of a layer, plus
    /// [`Builder::shuffle_seed`].
    pub fn builder(bundle: impl Into<BundleSource>) -> Builder<Trainer> {
        Builder::new(bundle)
    }

    fn assemble(bundle: Arc<Bundle>, mut options: Options, opt: OptStart, steps: u64) -> Result<Trainer> {
        let spec = bundle.manifest().train.clone().ok_or_else(|| {
            Error::invalid(bundle.dir().display().to_string(), "the bundle has no train section (export it with export_train_step)")
        })?;
        let batch_size = usize::try_from(spec.batch_size)
            .map_err(|_| Error::format("manifest.json", format!("train.batch_size {}", spec.batch_size)))?;
        if options.method.is_none() {
            options.method = spec.method.clone();
        }
        let shuffle_seed = options.shuffle_seed;
        let how = options.compile_how(&bundle);
        let mut layer = FlaxLayer::new(bundle.clone(), options)?;
        let shuffle_seed = shuffle_seed.unwrap_or(layer.seed());
        let placement = layer.state().placement().clone();
        let names = Names { variables: &bundle.manifest().variables, opt_state: &spec.opt_state };
        let compile = |file: &str| -> Result<Computation> {
            let c = Computation::new(&placement, bundle.computation(file)?, &names, &how)?;
            c.ensure_compiled()?;
            Ok(c)
        };
        let train = compile(&spec.train_step.file)?.donating_params();
        let eval = compile(&spec.eval_step.file)?;
        let layouts: Vec<(usize, Layout)> = (0..spec.opt_state.len()).map(|i| layout_in(&[&train], Source::OptState(i))).collect();
        let opt_state = match opt {
            OptStart::Fresh => {
                let init = compile(&spec.init_opt_state.file)?;
                let results = layer.state().run(&init, &[])?;
                let arrays = init.results_by(results, |s| if let Sink::OptState(i) = s { Some(i) } else { None }, &spec.opt_state, "optimizer state")?;
                arrays.into_iter().zip(&layouts).map(|(a, (n, l))| relayout(&placement, a, *n, l)).collect::<Result<Vec<_>>>()?
            }
            OptStart::Saved(given) => layer
                .state()
                .upload_named("optimizer state", &spec.opt_state, &layouts, &given, true)?
                .into_iter()
                .map(|a| a.ok_or_else(|| Error::invalid("optimizer state", "missing")))
                .collect::<Result<Vec<_>>>()?,
        };
        layer.state_mut().init_opt_state(spec.opt_state.clone(), opt_state, layouts)?;
        Ok(Trainer { layer, spec, shuffle_seed, steps, batch_size, train, eval })
    }

    /// The model: its variables, key, inference.
    pub fn layer(&self) -> &FlaxLayer {
        &self.layer
    }

    /// The manifest's train section (loss, optimizer, batch size, ...).
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// The exported batch size: every batch has exactly this many rows.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The seed of the batch order.
    pub fn shuffle_seed(&self) -> u64 {
        self.shuffle_seed
    }

    /// The number of optimizer steps taken (restored by [`Trainer::load`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The number of batches per epoch for `n` examples (the last partial batch is dropped).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n / self.batch_size
    }

    /// The current epoch (0-based) for a training set of `n` examples.
    pub fn epoch(&self, n: usize) -> u64 {
        match self.steps_per_epoch(n) {
            0 => 0,
            per => self.steps / per as u64,
        }
    }

    /// Checks `batch` against `comp`'s inputs (every one present once, dtype, shape;
    /// nothing else) and uploads it in `comp`'s order. Nothing is uploaded unless all fit.
    fn upload_batch(&self, comp: &Computation, batch: &Batch) -> Result<Vec<DeviceArray>> {
        let arrays = self.layer.state().upload_named("batch input", &comp.inputs, &comp.input_layouts(), batch.leaves(), true).map_err(|e| match e {
            Error::ShapeMismatch { what, expected, got } => {
                Error::ShapeMismatch { what: format!("{what} (the exported batch size is {})", self.batch_size), expected, got }
            }
            other => other,
        })?;
        arrays.into_iter().map(|a| a.ok_or_else(|| Error::invalid("batch", "missing input"))).collect()
    }

    /// One optimizer step on `batch` (`x`, `y`), on the device: params, state, optimizer
    /// state and key are donated and replaced; the step's metrics (`loss`, `accuracy`: batch
    /// means) come back.
    ///
    /// The batch is checked (names, dtypes, shapes; the exported batch size) before anything
    /// runs: a bad batch is an error naming the input and leaves the trainer unchanged.
    pub fn step(&mut self, batch: &Batch) -> Result<TrainMetrics> {
        let steps = self.steps.checked_add(1).ok_or_else(|| Error::invalid("trainer", "the step count overflows u64"))?;
        let inputs = self.upload_batch(&self.train, batch)?;
        let rest = self.layer.state_mut().run_and_apply(&self.train, &inputs)?;
        self.steps = steps;
        metrics(&self.train, rest)
    }

    /// Runs the rest of the current epoch over the training set `x`, `y` (rows are examples)
    /// in the documented batch order: epoch `steps / steps_per_epoch`, from batch
    /// `steps % steps_per_epoch`, so a resumed trainer continues where it stopped. Returns
    /// the mean of the steps' metrics and `steps` (how many ran).
    pub fn fit_epoch(&mut self, x: &Tensor, y: &Tensor) -> Result<TrainMetrics> {
        self.fit_epoch_with(x, y, |_| {})
    }

    /// [`Trainer::fit_epoch`], calling `on_step` with each step's metrics (progress bars).
    pub fn fit_epoch_with(&mut self, x: &Tensor, y: &Tensor, mut on_step: impl FnMut(&TrainMetrics)) -> Result<TrainMetrics> {
        let n = self.check_data(&self.train, x, y)?;
        let per_epoch = self.steps_per_epoch(n);
        if per_epoch == 0 {
            return Err(Error::invalid("training data", format!("{n} examples do not fill one batch of {}", self.batch_size)));
        }
        let epoch = self.steps / per_epoch as u64;
        let start = (self.steps % per_epoch as u64) as usize;
        let batches = epoch_batches(self.shuffle_seed, epoch, n, self.batch_size);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut count = 0usize;
        for idx in &batches[start..] {
            let batch = Batch::new(gather_rows(x, idx, self.batch_size)?, gather_rows(y, idx, self.batch_size)?);
            let m = self.step(&batch)?;
            on_step(&m);
            for (k, v) in m.iter() {
                *sums.entry(k.to_string()).or_default() += v;
            }
            count += 1;
        }
        let mut out = TrainMetrics::default();
        for (k, v) in sums {
            out.insert(k, v / count.max(1) as f64);
        }
        out.insert("steps", count as f64);
        Ok(out)
    }

    /// Evaluates on `x`, `y` (all rows, in order) with the inference-mode `eval_step`: the
    /// last partial batch is padded with weight 0, so the metrics are exact over the data set:
    /// `loss` (mean), `accuracy` (classification), `count`. Changes nothing.
    pub fn evaluate(&self, x: &Tensor, y: &Tensor) -> Result<TrainMetrics> {
        let n = self.check_data(&self.eval, x, y)?;
        if n == 0 {
            return Err(Error::invalid("evaluation data", "has no examples"));
        }
        let b = self.batch_size;
        let mut sums = vec![0f64; self.eval.metric_names.len()];
        for start in (0..n).step_by(b) {
            let idx: Vec<usize> = (start..n.min(start + b)).collect();
            let w: Vec<f32> = (0..b).map(|k| if k < idx.len() { 1.0 } else { 0.0 }).collect();
            let batch = Batch::from_named(vec![
                ("w".into(), Tensor::from_vec(vec![b], w)?),
                ("x".into(), gather_rows(x, &idx, b)?),
                ("y".into(), gather_rows(y, &idx, b)?),
            ]);
            let inputs = self.upload_batch(&self.eval, &batch)?;
            let results = self.layer.state().run(&self.eval, &inputs)?;
            for (sink, array) in self.eval.sinks.iter().zip(results) {
                if let Sink::Metric(i) = *sink {
                    sums[i] += scalar(&array)?;
                }
            }
        }
        let sums: BTreeMap<&str, f64> = self.eval.metric_names.iter().map(String::as_str).zip(sums).collect();
        let count = sums.get("count").copied().unwrap_or(n as f64);
        let mut out = TrainMetrics::default();
        for (&name, &v) in &sums {
            match name {
                "loss_sum" => out.insert("loss", v / count),
                "correct" => out.insert("accuracy", v / count),
                other => out.insert(other, v),
            }
        }
        Ok(out)
    }

    /// Copies the optimizer state to the host, by `opt_state/...` name.
    pub fn opt_state(&self) -> Result<Vec<(String, Tensor)>> {
        self.layer.state().opt_state()
    }

    /// A [`FlaxLayer`] over the same bundle and client with the trained variables and the
    /// current key, for inference (or further `call`s).
    pub fn to_flax_layer(&self) -> Result<FlaxLayer> {
        let options = Options {
            method: Some(self.layer.method().to_string()),
            variables: VariablesSource::Given(self.layer.variables()?),
            seed: Some(self.layer.seed()),
            key: Some(self.layer.key()?),
            device: self.layer.device_index(),
            client: Some(self.layer.client().clone()),
            ..Options::default()
        };
        FlaxLayer::build(self.layer.bundle().clone(), options)
    }

    /// Checks a data set (`x`, `y` with examples as rows) against `comp`'s `x` and `y`
    /// inputs, whatever the number of rows; returns the number of examples.
    fn check_data(&self, comp: &Computation, x: &Tensor, y: &Tensor) -> Result<usize> {
        let mut rows = Vec::with_capacity(2);
        for (name, t) in [("x", x), ("y", y)] {
            let spec = crate::spec::find(&comp.inputs, name)
                .ok_or_else(|| Error::NotFound { what: "batch input", name: name.into(), available: crate::spec::names(&comp.inputs) })?;
            let Some(&n) = t.shape().first() else {
                return Err(Error::ShapeMismatch { what: format!("data {name:?} (rows are examples)"), expected: spec.shape.clone(), got: vec![] });
            };
            let mut per_data = spec.shape.clone();
            if let Some(first) = per_data.first_mut() {
                *first = n;
            }
            TensorSpec::new(name, spec.dtype, per_data).check("data", t.dtype(), t.shape())?;
            rows.push(n);
        }
        if rows[0] != rows[1] {
            return Err(Error::invalid("data", format!("x has {} rows but y has {}", rows[0], rows[1])));
        }
        Ok(rows[0])
    }
}

/// The metrics among a step's results.
fn metrics(comp: &Computation, rest: Vec<(Sink, DeviceArray)>) -> Result<TrainMetrics> {
    let mut out = TrainMetrics::default();
    for (sink, array) in rest {
        if let Sink::Metric(i) = sink {
            out.insert(comp.metric_names[i].clone(), scalar(&array)?);
        }
    }
    Ok(out)
}

/// The value of a scalar metric.
fn scalar(array: &DeviceArray) -> Result<f64> {
    let t = array.to_tensor()?;
    t.to_f64_vec().first().copied().ok_or_else(|| Error::ShapeMismatch { what: "a metric".into(), expected: vec![], got: t.shape().to_vec() })
}

static_assertions::assert_impl_all!(Trainer: Send, Sync);
static_assertions::assert_impl_all!(TrainMetrics: Send, Sync);
static_assertions::assert_impl_all!(Batch: Send, Sync);

impl Builder<Trainer> {
    /// The seed of the batch order ([`epoch_permutation`](epoch_permutation));
    /// default: the seed.
    pub fn shuffle_seed(mut self, seed: u64) -> Self {
        self.options.shuffle_seed = Some(seed);
        self
    }
}
