//! `Trainer`: a bundle's exported optimizer step and evaluation step, with params, state,
//! optimizer state and RNG key kept on the device between steps (docs/training.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::computation::{Computation, Sink};
use super::flax_layer::{BundleSource, FlaxLayer};
use super::jax_layer::{run_init, seed_key, to_tensor, upload_variables};
use crate::bundle::{Bundle, InputSpec, TrainSpec, VariableSpec, VARIABLES_FILE};
use crate::pjrt::{Buffer, Client, Device};
use crate::tensor::{read_safetensors_with_metadata, write_safetensors};
use crate::{Error, Result, Tensor};

/// The file of [`Trainer::save`] that holds the step count, key and seeds; written last.
pub const TRAINER_FILE: &str = "trainer.json";
/// The file of [`Trainer::save`] that holds the optimizer state, by `opt_state/...` name.
pub const OPT_STATE_FILE: &str = "opt_state.safetensors";
const TRAINER_FORMAT: &str = "flaxlayer.trainer";
/// The safetensors metadata key that ties a saved file to its step count.
const STEP_KEY: &str = "step";

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014), the generator of the batch order.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The order of `n` training examples in epoch `epoch` (0-based): Fisher–Yates driven by
/// SplitMix64 seeded with `seed ^ ((epoch + 1) * 0x9E3779B97F4A7C15)` (wrapping). The same
/// as `epoch_permutation` in `scripts/export_train.py` (docs/training.md).
///
/// ```
/// let p = flaxlayer::layer::epoch_permutation(0, 0, 5);
/// let mut sorted = p.clone();
/// sorted.sort();
/// assert_eq!(sorted, [0, 1, 2, 3, 4]);
/// ```
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // `i + 1 <= n` fits in u64; the remainder is at most `i`.
        let j = (rng.next() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

/// The batches of epoch `epoch`: consecutive slices of `batch_size` of
/// [`epoch_permutation`]; the last partial slice is dropped.
pub fn epoch_batches(seed: u64, epoch: u64, n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    if batch_size == 0 {
        return Vec::new();
    }
    epoch_permutation(seed, epoch, n).chunks_exact(batch_size).map(<[usize]>::to_vec).collect()
}

/// A batch for [`Trainer::step`]: leaves named as the train step's batch inputs (`x`, `y`;
/// `x/...` when the model takes a PyTree).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    leaves: Vec<(String, Tensor)>,
}

impl Batch {
    /// A batch of inputs `x` and targets `y` (int32 labels for cross-entropy).
    pub fn new(x: Tensor, y: Tensor) -> Batch {
        Batch { leaves: vec![("x".into(), x), ("y".into(), y)] }
    }

    /// A batch from named leaves.
    pub fn from_named(leaves: Vec<(String, Tensor)>) -> Batch {
        Batch { leaves }
    }

    /// The leaves.
    pub fn leaves(&self) -> &[(String, Tensor)] {
        &self.leaves
    }

    fn get(&self, name: &str) -> Option<&Tensor> {
        self.leaves.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Named scalar metrics: `loss`, `accuracy`, `count`, ...
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// The metric `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The mean loss.
    pub fn loss(&self) -> Option<f64> {
        self.get("loss")
    }

    /// The fraction of correct predictions (classification losses only).
    pub fn accuracy(&self) -> Option<f64> {
        self.get("accuracy")
    }

    /// Every metric, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }

    fn insert(&mut self, name: impl Into<String>, value: f64) {
        self.0.insert(name.into(), value);
    }
}

/// What `trainer.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct SavedTrainer {
    format: String,
    version: u32,
    seed: u64,
    shuffle_seed: u64,
    steps: u64,
    key: [u32; 2],
    #[serde(default)]
    device: usize,
    #[serde(default)]
    plugin: Option<PathBuf>,
}

/// Where a trainer's device state comes from.
enum Start {
    /// Variables (or the bundle's `init` under the seed), a fresh optimizer state, key `K0`.
    Fresh(Option<Vec<(String, Tensor)>>),
    /// A checkpoint that [`Trainer::save`] wrote.
    Resume { variables: Vec<(String, Tensor)>, opt_state: Vec<(String, Tensor)>, key: [u32; 2], steps: u64 },
}

/// Builds a [`Trainer`]; see [`Trainer::builder`].
pub struct TrainerBuilder {
    source: BundleSource,
    seed: Option<u64>,
    shuffle_seed: Option<u64>,
    variables: Option<Vec<(String, Tensor)>>,
    device: usize,
    plugin: Option<PathBuf>,
    client: Option<Client>,
}

impl TrainerBuilder {
    /// The seed of `init` and of the RNG key (`jax.random.key(seed)`); default: the bundle's.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The seed of the batch order ([`epoch_permutation`]); default: the seed.
    pub fn shuffle_seed(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Initial variables by Flax path, all of them (e.g. pretrained ones to fine-tune);
    /// default: the bundle's `init` runs on the device with the seed.
    pub fn variables(mut self, variables: Vec<(String, Tensor)>) -> Self {
        self.variables = Some(variables);
        self
    }

    /// The device index; default 0.
    pub fn device(mut self, index: usize) -> Self {
        self.device = index;
        self
    }

    /// The PJRT plugin `.so`; default `$PJRT_PLUGIN_PATH`, else the installed CPU plugin.
    pub fn plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.plugin = Some(path.into());
        self
    }

    /// Shares an existing PJRT client.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Opens the bundle, compiles the train section, and sets up variables, a fresh
    /// optimizer state (`init_opt_state`) and the key.
    pub fn build(self) -> Result<Trainer> {
        let bundle = match self.source {
            BundleSource::Path(p) => Arc::new(Bundle::open(p)?),
            BundleSource::Bundle(b) => b,
        };
        let seed = self.seed.unwrap_or(bundle.manifest().seed);
        let client = match self.client {
            Some(c) => c,
            None => Client::new(self.plugin.as_deref())?,
        };
        let shuffle_seed = self.shuffle_seed.unwrap_or(seed);
        Trainer::assemble(bundle, client, self.device, seed, shuffle_seed, Start::Fresh(self.variables))
    }
}

/// Trains a bundle's model with its exported `train_step` (Keras' trainable `FlaxLayer`).
///
/// Params, state (`batch_stats`, ...), optimizer state and RNG key live on the device and are
/// donated to each step: only the batch goes up and a few scalar metrics come down.
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
/// trainer.save("/tmp/digits_checkpoint")?;
/// let layer = trainer.to_flax_layer()?; // inference with the trained variables
/// # Ok(())
/// # }
/// ```
pub struct Trainer {
    bundle: Arc<Bundle>,
    spec: TrainSpec,
    client: Client,
    device: Device,
    device_index: usize,
    seed: u64,
    shuffle_seed: u64,
    var_specs: Vec<VariableSpec>,
    vars: Vec<Buffer>,
    opt_state: Vec<Buffer>,
    key: Buffer,
    steps: u64,
    batch_size: usize,
    train: Computation,
    eval: Computation,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("bundle", &self.bundle.dir())
            .field("loss", &self.spec.loss)
            .field("optimizer", &self.spec.optimizer)
            .field("batch_size", &self.batch_size)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Trainer {
    /// Starts building a trainer over a bundle directory or an opened [`Bundle`] that has a
    /// `train` section (`scripts/export_train.py`).
    pub fn builder(bundle: impl Into<BundleSource>) -> TrainerBuilder {
        TrainerBuilder {
            source: bundle.into(),
            seed: None,
            shuffle_seed: None,
            variables: None,
            device: 0,
            plugin: None,
            client: None,
        }
    }

    fn assemble(bundle: Arc<Bundle>, client: Client, device_index: usize, seed: u64, shuffle_seed: u64, start: Start) -> Result<Trainer> {
        let manifest = bundle.manifest();
        let spec = manifest.train.clone().ok_or_else(|| {
            Error::invalid(
                bundle.dir().display().to_string(),
                "the bundle has no train section (export it with scripts/export_train.py)",
            )
        })?;
        let batch_size = usize::try_from(spec.batch_size)
            .map_err(|_| Error::format("manifest.json", format!("train.batch_size {}", spec.batch_size)))?;
        let device = client.device(device_index)?;
        let portable = device_index != 0;
        let var_specs = manifest.variables.clone();
        let var_names: Vec<String> = var_specs.iter().map(|v| v.name.clone()).collect();
        let opt_names: Vec<String> = spec.opt_state.iter().map(|v| v.name.clone()).collect();
        let compile = |file: &str| -> Result<Computation> {
            let c = Computation::new_with_opt_state(&client, &device, portable, bundle.computation(file)?, &var_names, &opt_names)?;
            c.ensure_compiled()?;
            Ok(c)
        };
        let train = compile(&spec.train_step.file)?.donating_params();
        let eval = compile(&spec.eval_step.file)?;
        let upload = |given: &[(String, Tensor)]| -> Result<Vec<Buffer>> {
            upload_variables(&client, &device, &var_specs, given, true)?
                .into_iter()
                .map(|b| b.ok_or_else(|| Error::invalid("variables", "missing")))
                .collect()
        };
        let (vars, opt_state, key, steps) = match start {
            Start::Fresh(given) => {
                let key = client.buffer_from_slice(&seed_key(seed), &[2], &device)?;
                let vars = match given {
                    Some(given) => upload(&given)?,
                    None => run_init(&client, &device, portable, bundle.computation(&manifest.init.file)?, &var_names, &key, crate::layer::cache::cache_dir())?,
                };
                let init = compile(&spec.init_opt_state.file)?;
                let outs = init.run_with_opt_state(&vars, &[], None, &[], false)?;
                let mut opt: Vec<Option<Buffer>> = opt_names.iter().map(|_| None).collect();
                for (sink, buf) in init.sinks.iter().zip(outs) {
                    if let Sink::OptState(i) = *sink {
                        opt[i] = Some(buf);
                    }
                }
                let opt = opt
                    .into_iter()
                    .zip(&opt_names)
                    .map(|(b, n)| b.ok_or_else(|| Error::format(init.file.clone(), format!("does not produce {n:?}"))))
                    .collect::<Result<Vec<_>>>()?;
                (vars, opt, key, 0)
            }
            Start::Resume { variables, opt_state, key, steps } => {
                let vars = upload(&variables)?;
                let opt = upload_opt_state(&client, &device, &spec.opt_state, &opt_state)?;
                (vars, opt, client.buffer_from_slice(&key, &[2], &device)?, steps)
            }
        };
        Ok(Trainer {
            bundle,
            spec,
            client,
            device,
            device_index,
            seed,
            shuffle_seed,
            var_specs,
            vars,
            opt_state,
            key,
            steps,
            batch_size,
            train,
            eval,
        })
    }

    /// The bundle.
    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.bundle
    }

    /// The manifest's train section (loss, optimizer, batch size, ...).
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// The PJRT client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The exported batch size: every batch has exactly this many rows.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The seed of `init` and of the key.
    pub fn seed(&self) -> u64 {
        self.seed
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

    /// One optimizer step on `batch` (`x`, `y`), on the device: params, state, optimizer
    /// state and key are donated and replaced; the step's metrics (`loss`, `accuracy`: batch
    /// means) come back.
    ///
    /// The batch is checked (names, dtypes, shapes; the exported batch size) before anything
    /// runs: a bad batch is an error naming the input and leaves the trainer unchanged.
    pub fn step(&mut self, batch: &Batch) -> Result<Metrics> {
        let inputs = self.upload_batch(&self.train, batch)?;
        let outs = self.train.run_with_opt_state(&self.vars, &self.opt_state, Some(&self.key), &inputs, true)?;
        self.steps += 1;
        let mut metrics = Vec::new();
        for (sink, buf) in self.train.sinks.iter().zip(outs) {
            match *sink {
                Sink::Var(i) => self.vars[i] = buf,
                Sink::OptState(i) => self.opt_state[i] = buf,
                Sink::Key => self.key = buf,
                Sink::Metric(i) => metrics.push((i, buf)),
                Sink::Output(_) => {}
            }
        }
        let mut out = Metrics::default();
        for (i, buf) in metrics {
            out.insert(self.train.metric_names[i].clone(), scalar(&buf)?);
        }
        Ok(out)
    }

    /// Runs the rest of the current epoch over the training set `x`, `y` (rows are examples)
    /// in the documented batch order: epoch `steps / steps_per_epoch`, from batch
    /// `steps % steps_per_epoch`, so a resumed trainer continues where it stopped. Returns
    /// the mean of the steps' metrics and `steps` (how many ran).
    pub fn fit_epoch(&mut self, x: &Tensor, y: &Tensor) -> Result<Metrics> {
        self.fit_epoch_with(x, y, |_| {})
    }

    /// [`Trainer::fit_epoch`], calling `on_step` with each step's metrics (progress bars).
    pub fn fit_epoch_with(&mut self, x: &Tensor, y: &Tensor, mut on_step: impl FnMut(&Metrics)) -> Result<Metrics> {
        let n = self.check_data(&self.train, x, y)?;
        let per_epoch = self.steps_per_epoch(n);
        if per_epoch == 0 {
            return Err(Error::invalid(
                "training data",
                format!("{n} examples do not fill one batch of {}", self.batch_size),
            ));
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
        let mut out = Metrics::default();
        for (k, v) in sums {
            out.insert(k, v / count.max(1) as f64);
        }
        out.insert("steps", count as f64);
        Ok(out)
    }

    /// Evaluates on `x`, `y` (all rows, in order) with the inference-mode `eval_step`: the
    /// last partial batch is padded with weight 0, so the metrics are exact over the data set:
    /// `loss` (mean), `accuracy` (classification), `count`. Changes nothing.
    pub fn evaluate(&self, x: &Tensor, y: &Tensor) -> Result<Metrics> {
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
            let outs = self.eval.run_with_opt_state(&self.vars, &[], None, &inputs, false)?;
            for (sink, buf) in self.eval.sinks.iter().zip(outs) {
                if let Sink::Metric(i) = *sink {
                    sums[i] += scalar(&buf)?;
                }
            }
        }
        let sums: BTreeMap<&str, f64> = self.eval.metric_names.iter().map(String::as_str).zip(sums).collect();
        let count = sums.get("count").copied().unwrap_or(n as f64);
        let mut out = Metrics::default();
        for (&name, &v) in &sums {
            match name {
                "loss_sum" => out.insert("loss", v / count),
                "correct" => out.insert("accuracy", v / count),
                other => out.insert(other, v),
            }
        }
        Ok(out)
    }

    /// Copies every variable (params and state) to the host, by Flax path.
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        self.var_specs.iter().zip(&self.vars).map(|(s, b)| Ok((s.name.clone(), to_tensor(b)?))).collect()
    }

    /// Copies the optimizer state to the host, by `opt_state/...` name.
    pub fn opt_state(&self) -> Result<Vec<(String, Tensor)>> {
        self.spec.opt_state.iter().zip(&self.opt_state).map(|(s, b)| Ok((s.name.clone(), to_tensor(b)?))).collect()
    }

    /// The current RNG key data.
    pub fn key(&self) -> Result<[u32; 2]> {
        super::jax_layer::key_data(&self.key)
    }

    /// A [`FlaxLayer`] over the same bundle and client with the trained variables and the
    /// current key, for inference (or further `call`s).
    pub fn to_flax_layer(&self) -> Result<FlaxLayer> {
        let mut b = FlaxLayer::builder(self.bundle.clone())
            .client(self.client.clone())
            .device(self.device_index)
            .seed(self.seed)
            .variables(self.variables()?);
        if let Some(m) = &self.spec.method {
            b = b.method(m);
        }
        let mut layer = b.build()?;
        layer.set_key(self.key()?)?;
        Ok(layer)
    }

    /// Saves a checkpoint into `dir`: the bundle's manifest and computations, the variables
    /// (`variables.safetensors`), the optimizer state ([`OPT_STATE_FILE`]) and
    /// [`TRAINER_FILE`] (step count, key, seeds). Every file is written atomically and
    /// `trainer.json` comes last; each safetensors file records the step count, so
    /// [`Trainer::load`] refuses a checkpoint torn by a crash between files. The directory is
    /// itself a bundle, so a [`FlaxLayer`] can also be built on it.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        super::saved::copy_bundle(&self.bundle, dir)?;
        let meta = |content: &str| -> Option<HashMap<String, String>> {
            Some(HashMap::from([
                ("format".to_string(), "flaxlayer.bundle".to_string()),
                ("version".to_string(), "1".to_string()),
                ("content".to_string(), content.to_string()),
                (STEP_KEY.to_string(), self.steps.to_string()),
            ]))
        };
        let vars = self.variables()?;
        let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(dir.join(VARIABLES_FILE), &refs, meta("variables"))?;
        let opt = self.opt_state()?;
        let refs: Vec<(&str, &Tensor)> = opt.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(dir.join(OPT_STATE_FILE), &refs, meta("opt_state"))?;
        let saved = SavedTrainer {
            format: TRAINER_FORMAT.into(),
            version: 1,
            seed: self.seed,
            shuffle_seed: self.shuffle_seed,
            steps: self.steps,
            key: self.key()?,
            device: self.device_index,
            plugin: Some(self.client.plugin().path().to_path_buf()),
        };
        super::saved::write_json(&dir.join(TRAINER_FILE), &saved)
    }

    /// Loads a checkpoint that [`Trainer::save`] wrote; training continues bit for bit as
    /// if it had not stopped.
    pub fn load(dir: impl AsRef<Path>) -> Result<Trainer> {
        Trainer::load_with(dir, None)
    }

    /// [`Trainer::load`] on a given client.
    pub fn load_with(dir: impl AsRef<Path>, client: Option<Client>) -> Result<Trainer> {
        let dir = dir.as_ref();
        let saved: SavedTrainer = super::saved::read_json(&dir.join(TRAINER_FILE), TRAINER_FORMAT)?;
        let read = |file: &str| -> Result<Vec<(String, Tensor)>> {
            let p = dir.join(file);
            let (tensors, meta) = read_safetensors_with_metadata(&p)?;
            let step = meta.get(STEP_KEY).map(String::as_str).unwrap_or("(none)");
            if step != saved.steps.to_string() {
                return Err(Error::format(
                    p.display().to_string(),
                    format!("is from step {step} but {TRAINER_FILE} from step {}: a torn checkpoint", saved.steps),
                ));
            }
            Ok(tensors)
        };
        let start = Start::Resume {
            variables: read(VARIABLES_FILE)?,
            opt_state: read(OPT_STATE_FILE)?,
            key: saved.key,
            steps: saved.steps,
        };
        let client = match client {
            Some(c) => c,
            None => Client::new(saved.plugin.filter(|p| p.is_file()).as_deref())?,
        };
        let bundle = Arc::new(Bundle::open(dir)?);
        Trainer::assemble(bundle, client, saved.device, saved.seed, saved.shuffle_seed, start)
    }

    /// Checks `batch` against `comp`'s inputs (every one present, dtype, shape; nothing
    /// else) and uploads it in `comp`'s order. Nothing is uploaded unless all fit.
    fn upload_batch(&self, comp: &Computation, batch: &Batch) -> Result<Vec<Buffer>> {
        for (name, _) in batch.leaves() {
            if !comp.input_names.contains(name) {
                return Err(Error::NotFound { what: "batch input", name: name.clone(), available: comp.input_names.join(", ") });
            }
        }
        let mut leaves = Vec::with_capacity(comp.input_names.len());
        for (name, aval) in comp.input_names.iter().zip(&comp.input_avals) {
            let t = batch.get(name).ok_or_else(|| Error::NotFound {
                what: "batch input",
                name: name.clone(),
                available: batch.leaves().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            })?;
            if t.dtype() != aval.dtype {
                return Err(Error::DTypeMismatch {
                    what: format!("batch input {name:?}"),
                    expected: aval.dtype.to_string(),
                    got: t.dtype().to_string(),
                });
            }
            if t.dims_i64() != aval.shape {
                return Err(Error::ShapeMismatch {
                    what: format!("batch input {name:?} (the exported batch size is {})", self.batch_size),
                    expected: aval.shape.clone(),
                    got: t.dims_i64(),
                });
            }
            leaves.push(t);
        }
        leaves.iter().map(|t| self.client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), &self.device)).collect()
    }

    /// Checks a data set (`x`, `y` with examples as rows) against `comp`'s `x` and `y`
    /// inputs, whatever the number of rows; returns the number of examples.
    fn check_data(&self, comp: &Computation, x: &Tensor, y: &Tensor) -> Result<usize> {
        let mut rows = Vec::with_capacity(2);
        for (name, t) in [("x", x), ("y", y)] {
            let aval = comp
                .input_names
                .iter()
                .position(|n| n == name)
                .map(|i| &comp.input_avals[i])
                .ok_or_else(|| Error::NotFound { what: "batch input", name: name.into(), available: comp.input_names.join(", ") })?;
            if t.dtype() != aval.dtype {
                return Err(Error::DTypeMismatch {
                    what: format!("data {name:?}"),
                    expected: aval.dtype.to_string(),
                    got: t.dtype().to_string(),
                });
            }
            let dims = t.dims_i64();
            if dims.is_empty() || aval.shape.is_empty() || dims[1..] != aval.shape[1..] {
                let mut expected = aval.shape.clone();
                if let Some(first) = expected.first_mut() {
                    *first = dims.first().copied().unwrap_or(-1);
                }
                return Err(Error::ShapeMismatch { what: format!("data {name:?} (rows are examples)"), expected, got: dims });
            }
            rows.push(t.shape()[0]);
        }
        if rows[0] != rows[1] {
            return Err(Error::invalid("data", format!("x has {} rows but y has {}", rows[0], rows[1])));
        }
        Ok(rows[0])
    }
}

/// Rows `idx` of `t` (examples along the first axis), zero-padded to `rows` rows.
fn gather_rows(t: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> {
    let n = t.shape().first().copied().unwrap_or(0);
    let mut shape = t.shape().to_vec();
    let Some(first) = shape.first_mut() else {
        return Err(Error::invalid("data", "a scalar has no rows"));
    };
    *first = rows;
    let mut out = Tensor::zeros(t.dtype(), shape)?;
    if n == 0 {
        return Ok(out);
    }
    let row = t.num_bytes() / n;
    let src = t.as_bytes();
    let dst = out.as_mut_bytes();
    for (k, &i) in idx.iter().enumerate().take(rows) {
        let from = src.get(i * row..(i + 1) * row).ok_or_else(|| Error::invalid("data", format!("row {i} of {n}")))?;
        dst[k * row..(k + 1) * row].copy_from_slice(from);
    }
    Ok(out)
}

/// The value of a scalar metric buffer.
fn scalar(buf: &Buffer) -> Result<f64> {
    to_tensor(buf)?
        .to_f64_vec()
        .first()
        .copied()
        .ok_or_else(|| Error::ShapeMismatch { what: "a metric".into(), expected: vec![], got: buf.dims().to_vec() })
}

/// Checks and uploads a saved optimizer state: exactly the manifest's leaves, dtypes, shapes.
fn upload_opt_state(client: &Client, device: &Device, specs: &[InputSpec], given: &[(String, Tensor)]) -> Result<Vec<Buffer>> {
    let available = || specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    for (name, _) in given {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(Error::NotFound { what: "optimizer state", name: name.clone(), available: available() });
        }
    }
    let mut found = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = given
            .iter()
            .find(|(n, _)| n == &spec.name)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::NotFound { what: "optimizer state", name: spec.name.clone(), available: "(not given)".into() })?;
        if t.dtype() != spec.dtype {
            return Err(Error::DTypeMismatch {
                what: format!("optimizer state {:?}", spec.name),
                expected: spec.dtype.to_string(),
                got: t.dtype().to_string(),
            });
        }
        if t.dims_i64() != spec.shape {
            return Err(Error::ShapeMismatch { what: format!("optimizer state {:?}", spec.name), expected: spec.shape.clone(), got: t.dims_i64() });
        }
        found.push(t);
    }
    found.into_iter().map(|t| client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), device)).collect()
}

#[allow(dead_code)]
fn ensure_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Trainer>();
    is::<Metrics>();
    is::<Batch>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Vigna's splitmix64.c from state 0: the first outputs.
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn permutations_are_permutations_and_differ_by_epoch_and_seed() {
        for n in [0usize, 1, 2, 10, 1437] {
            let mut p = epoch_permutation(7, 3, n);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(epoch_permutation(0, 0, 50), epoch_permutation(0, 1, 50));
        assert_ne!(epoch_permutation(0, 0, 50), epoch_permutation(1, 0, 50));
        assert_eq!(epoch_permutation(u64::MAX, u64::MAX, 20), epoch_permutation(u64::MAX, u64::MAX, 20));
    }

    #[test]
    fn batches_drop_the_last_partial_one() {
        let b = epoch_batches(0, 0, 10, 4);
        assert_eq!(b.len(), 2);
        assert_eq!(b.concat(), epoch_permutation(0, 0, 10)[..8]);
        assert!(epoch_batches(0, 0, 3, 4).is_empty());
        assert!(epoch_batches(0, 0, 3, 0).is_empty());
    }

    #[test]
    fn rows_are_gathered_and_padded() {
        let t = Tensor::from_vec(vec![3, 2], vec![0i32, 1, 10, 11, 20, 21]).unwrap();
        let g = gather_rows(&t, &[2, 0], 3).unwrap();
        assert_eq!(g.shape(), &[3, 2]);
        assert_eq!(g.to_vec::<i32>().unwrap(), [20, 21, 0, 1, 0, 0]);
        assert!(gather_rows(&t, &[3], 1).is_err());
        assert!(gather_rows(&Tensor::scalar(1f32), &[0], 1).is_err());
    }
}
