//! `flaxlayer train`: train a bundle's model (its exported `train_step`) on a safetensors
//! data set, epoch by epoch, in the documented batch order (docs/training.md).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{TrainMetrics, Tensor, Trainer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A bundle with a train section (the exporter's export_train_step).
    bundle: PathBuf,
    /// safetensors with `x_train`, `y_train` and optionally `x_test`, `y_test` (rows are examples).
    #[arg(long)]
    data: PathBuf,
    /// Epochs to run (after the checkpoint's, with --resume).
    #[arg(long)]
    epochs: u64,
    /// Must equal the bundle's exported batch size.
    #[arg(long)]
    batch_size: usize,
    /// The seed of init, the RNG key and the batch order; default: the bundle's.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue from a checkpoint that --save wrote (its seed, key, step and optimizer state).
    #[arg(long, conflicts_with = "seed")]
    resume: Option<PathBuf>,
    /// Write a checkpoint (a bundle with the trained variables) here after every epoch.
    #[arg(long)]
    save: Option<PathBuf>,
    /// One JSON line per epoch on stdout: epoch, loss, train_accuracy, test_loss, test_accuracy.
    #[arg(long)]
    json: bool,
}

struct Data {
    x_train: Tensor,
    y_train: Tensor,
    test: Option<(Tensor, Tensor)>,
}

fn read_data(path: &Path) -> Result<Data> {
    let mut all: BTreeMap<String, Tensor> =
        read_safetensors(path).with_context(|| format!("reading --data {}", path.display()))?.into_iter().collect();
    let mut take = |name: &str| all.remove(name);
    let (Some(x_train), Some(y_train)) = (take("x_train"), take("y_train")) else {
        bail!("--data {} needs tensors x_train and y_train", path.display());
    };
    let test = match (take("x_test"), take("y_test")) {
        (Some(x), Some(y)) => Some((x, y)),
        (None, None) => None,
        _ => bail!("--data {}: x_test and y_test go together", path.display()),
    };
    Ok(Data { x_train, y_train, test })
}

/// Checks, before any training, that a checkpoint can be written at `dir`: its parent exists
/// (or can be made) and takes new files.
fn check_save_destination(dir: &Path) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("--save {}: cannot create {}", dir.display(), parent.display()))?;
    let probe = parent.join(format!(".flaxlayer-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("--save {}: {} is not writable", dir.display(), parent.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(args: TrainArgs, common: &crate::Common) -> Result<()> {
    if let Some(dir) = &args.save {
        check_save_destination(dir)?;
    }
    let data = read_data(&args.data)?;
    let mut trainer = match &args.resume {
        Some(dir) => common.apply(Trainer::builder(dir)).load().with_context(|| format!("loading checkpoint {}", dir.display()))?,
        None => {
            let mut b = common.apply(Trainer::builder(&args.bundle));
            if let Some(s) = args.seed {
                b = b.seed(s);
            }
            b.build().with_context(|| format!("loading bundle {}", args.bundle.display()))?
        }
    };
    if args.batch_size != trainer.batch_size() {
        bail!(
            "--batch-size {} does not match the bundle's exported batch size {} (re-export with another batch size)",
            args.batch_size,
            trainer.batch_size()
        );
    }
    let n = data.x_train.shape().first().copied().unwrap_or(0);
    let per_epoch = trainer.steps_per_epoch(n);
    if per_epoch == 0 {
        bail!("x_train has {n} examples, fewer than one batch of {}", args.batch_size);
    }
    if !args.json {
        let spec = trainer.spec();
        eprintln!(
            "training {} ({} loss, {}) on {n} examples: {per_epoch} batches of {} per epoch",
            args.bundle.display(),
            spec.loss(),
            spec.optimizer(),
            trainer.batch_size()
        );
    }
    let first = trainer.epoch(n);
    let last = first.checked_add(args.epochs).context("--epochs overflows the epoch count")?;
    for epoch in first..last {
        let started = Instant::now();
        let bar = progress_bar(args.json, per_epoch as u64, epoch + 1);
        bar.set_position(trainer.steps() % per_epoch as u64);
        let train = trainer.fit_epoch_with(&data.x_train, &data.y_train, |m| {
            bar.inc(1);
            if let Some(l) = m.loss() {
                bar.set_message(format!("loss {l:.4}"));
            }
        })?;
        bar.finish_and_clear();
        let test = data.test.as_ref().map(|(x, y)| trainer.evaluate(x, y)).transpose()?;
        if let Some(dir) = &args.save {
            trainer.save(dir).with_context(|| format!("saving to {}", dir.display()))?;
        }
        report(epoch + 1, &train, test.as_ref(), started.elapsed().as_secs_f64(), args.json)?;
    }
    if let (Some(dir), false) = (&args.save, args.json) {
        eprintln!("checkpoint: {} (resume with --resume; as a bundle it runs with the trained variables)", dir.display());
    }
    Ok(())
}

fn progress_bar(hidden: bool, len: u64, epoch: u64) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(epoch.to_string());
    bar
}

fn report(epoch: u64, train: &TrainMetrics, test: Option<&TrainMetrics>, seconds: f64, json: bool) -> Result<()> {
    if json {
        let mut line = serde_json::Map::new();
        line.insert("epoch".into(), epoch.into());
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v {
                line.insert(k.into(), v.into());
            }
        };
        put("loss", train.loss());
        put("train_accuracy", train.accuracy());
        put("test_loss", test.and_then(TrainMetrics::loss));
        put("test_accuracy", test.and_then(TrainMetrics::accuracy));
        put("seconds", Some(seconds));
        outln!("{}", serde_json::Value::Object(line));
        return Ok(());
    }
    let mut parts = vec![format!("epoch {epoch}")];
    let mut fmt = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            parts.push(format!("{k} {v:.4}"));
        }
    };
    fmt("loss", train.loss());
    fmt("train_accuracy", train.accuracy());
    fmt("test_loss", test.and_then(TrainMetrics::loss));
    fmt("test_accuracy", test.and_then(TrainMetrics::accuracy));
    parts.push(format!("({seconds:.2} s)"));
    outln!("{}", parts.join("  "));
    Ok(())
}
