//! `flaxlayer run`: one method on inputs from files (safetensors, `.npy`, JSON) or on zeros or
//! random values; the outputs printed (a table or JSON) or written to a safetensors file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flaxlayer::tensor::write_safetensors;
use flaxlayer::{DType, FlaxLayer, Mode, PyTree, Tensor, TensorSpec};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("synthetic").args(["zeros", "random"])))]
pub struct RunArgs {
    bundle: PathBuf,
    /// Inputs, repeatable: a .safetensors file (tensors named by PyTree path: `inputs` for a
    /// bare array, `0`, `1/ids`, `image`, ...), a .json file (`{"image": [[...]], ...}`, or a
    /// nested list for a method of one input) or a .npy file; `NAME=FILE` names the input a
    /// .npy or a bare .json list is.
    #[arg(long, value_name = "[NAME=]FILE", required_unless_present_any = ["zeros", "random"])]
    input: Vec<String>,
    /// Run on zeros instead of files (a smoke test), at --batch rows.
    #[arg(long, conflicts_with_all = ["input", "random"])]
    zeros: bool,
    /// Run on random values from this seed instead of files (normal floats, small
    /// non-negative integers, random bools), at --batch rows.
    #[arg(long, value_name = "SEED", conflicts_with = "input")]
    random: Option<u64>,
    /// The batch size of --zeros / --random (default: the first exported size). A method
    /// that takes any batch size runs any.
    #[arg(long, requires = "synthetic")]
    batch: Option<usize>,
    /// Tensors in the input files that are not inputs of the method are ignored (with a
    /// note) instead of refused.
    #[arg(long)]
    ignore_extra: bool,
    /// Where to write the outputs (safetensors, named by PyTree path: `outputs` for a bare
    /// array). Its directory must exist; it is checked before anything runs.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the outputs: as a table (the default without --output) or as JSON
    /// (`{"name": {"dtype", "shape", "data"}}`).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "table")]
    print: Option<PrintFormat>,
    #[arg(long)]
    method: Option<String>,
    /// Use the training computation (dropout on, batch stats updated, key advanced).
    #[arg(long)]
    training: bool,
    #[arg(long)]
    seed: Option<u64>,
    /// Variables to start from (by Flax path) instead of the bundle's own.
    #[arg(long, conflicts_with = "init")]
    variables: Option<PathBuf>,
    /// Run the bundle's init on the device with the seed instead of starting from the
    /// bundle's own variables.
    #[arg(long)]
    init: bool,
    /// Make N successive calls on the same inputs and keep the last outputs.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Write the variables after the calls.
    #[arg(long)]
    save_variables: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PrintFormat {
    Table,
    Json,
}

/// What fills synthetic inputs.
#[derive(Clone, Copy)]
pub enum Fill {
    Zeros,
    Random(u64),
}

/// Inputs for `batch` rows (default: the first exported size), filled with zeros or random
/// values (normal floats, small non-negative integers, random bools).
pub fn synthetic_inputs(layer: &FlaxLayer, mode: Mode, batch: Option<usize>, fill: Fill) -> Result<PyTree> {
    let specs = layer.input_specs(mode);
    let sig = specs.first().context("the method has no computations")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(match fill {
        Fill::Random(s) => s,
        Fill::Zeros => 0,
    });
    let mut leaves = Vec::new();
    for spec in sig {
        let mut shape = spec.shape.clone();
        if let (Some(b), Some(first)) = (batch, shape.first_mut()) {
            *first = b;
        }
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context("the input shape overflows")?;
        let t = match fill {
            Fill::Zeros => Tensor::zeros(spec.dtype, shape)?,
            Fill::Random(_) => match spec.dtype {
                DType::F32 => Tensor::from_vec(shape, (0..n).map(|_| StandardNormal.sample(&mut rng)).collect::<Vec<f32>>())?,
                DType::F64 => Tensor::from_vec(shape, (0..n).map(|_| StandardNormal.sample(&mut rng)).collect::<Vec<f64>>())?,
                DType::BF16 => Tensor::from_vec(shape, (0..n).map(|_| half::bf16::from_f32(StandardNormal.sample(&mut rng))).collect::<Vec<_>>())?,
                DType::F16 => Tensor::from_vec(shape, (0..n).map(|_| half::f16::from_f32(StandardNormal.sample(&mut rng))).collect::<Vec<_>>())?,
                DType::I32 => Tensor::from_vec(shape, (0..n).map(|_| rng.random_range(0..4)).collect::<Vec<i32>>())?,
                DType::I64 => Tensor::from_vec(shape, (0..n).map(|_| rng.random_range(0..4)).collect::<Vec<i64>>())?,
                DType::Bool => Tensor::from_bools(shape, &(0..n).map(|_| rng.random_bool(0.5)).collect::<Vec<_>>())?,
                other => Tensor::zeros(other, shape)?,
            },
        };
        leaves.push((spec.name.clone(), t));
    }
    Ok(PyTree::from_named_leaves(layer.input_tree(), "inputs", leaves)?)
}

fn build_layer(args: &RunArgs, common: &crate::Common) -> Result<FlaxLayer> {
    let mut b = common.apply(FlaxLayer::builder(&args.bundle));
    if let Some(m) = &args.method {
        b = b.method(m);
    }
    if let Some(s) = args.seed {
        b = b.seed(s);
    }
    if let Some(v) = &args.variables {
        b = b.variables_file(v);
    }
    if args.init {
        b = b.init_variables();
    }
    b.build().with_context(|| format!("loading bundle {}", args.bundle.display()))
}

/// Checks that a file can be written at `path` before anything runs: its directory exists.
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("{flag} {}: the directory {} does not exist; create it (mkdir -p {}) and run again (nothing was run)",
            path.display(), dir.display(), dir.display());
    }
    if path.is_dir() {
        bail!("{flag} {}: is a directory; name a file, such as {}", path.display(), path.join("outputs.safetensors").display());
    }
    Ok(())
}

/// The input specs of the method, listed for messages: `image: float32[2, 8, 8, 1], ...`.
fn takes(specs: &[TensorSpec]) -> String {
    specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The method's inputs for messages, with `?` for a dimension that varies:
/// `image: float32[?, 8, 8, 1], meta: float32[?, 3]`.
fn takes_any(layer: &FlaxLayer) -> String {
    layer.inputs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Reads the `--input` files into named tensors, each remembering its file.
fn read_inputs(args: &RunArgs, specs: &[TensorSpec]) -> Result<Vec<(String, Tensor, String)>> {
    let mut out: Vec<(String, Tensor, String)> = Vec::new();
    let only = || -> Result<String> {
        match specs {
            [one] => Ok(one.name.clone()),
            _ => bail!("the method takes {} inputs ({}): name the one this file holds with NAME=FILE", specs.len(), takes(specs)),
        }
    };
    for arg in &args.input {
        let (name, file) = match arg.split_once('=') {
            Some((n, f)) if !Path::new(arg).exists() => (Some(n.to_string()), PathBuf::from(f)),
            _ => (None, PathBuf::from(arg)),
        };
        let shown = file.display().to_string();
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        match ext.as_str() {
            "npy" => {
                let t = Tensor::read_npy(&file).with_context(|| format!("reading --input {shown}"))?;
                let name = match name {
                    Some(n) => n,
                    None => only().with_context(|| format!("--input {shown}"))?,
                };
                out.push((name, t, shown));
            }
            "json" => {
                for (n, t) in read_json(&file, name, specs, &only)? {
                    out.push((n, t, shown.clone()));
                }
            }
            _ => {
                if name.is_some() {
                    bail!("--input {arg}: NAME=FILE is for a .npy or .json file; a safetensors file names its tensors itself");
                }
                let map = Tensor::read_safetensors(&file).with_context(|| format!("reading --input {shown}"))?;
                out.extend(map.into_iter().map(|(n, t)| (n, t, shown.clone())));
            }
        }
    }
    Ok(out)
}

/// A JSON input file: an object of input name -> nested list, or one nested list (`NAME=` or
/// the method's only input). Values take the input's dtype.
fn read_json(file: &Path, name: Option<String>, specs: &[TensorSpec], only: &dyn Fn() -> Result<String>) -> Result<Vec<(String, Tensor)>> {
    let shown = file.display().to_string();
    let meta = std::fs::metadata(file).with_context(|| format!("reading --input {shown}"))?;
    if !meta.is_file() || meta.len() > (1 << 30) {
        bail!("--input {shown}: expected a regular JSON file of at most 1 GiB");
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading --input {shown}"))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--input {shown}: not valid JSON"))?;
    let items: Vec<(String, serde_json::Value)> = match (value, name) {
        (v, Some(n)) => vec![(n, v)],
        (serde_json::Value::Object(m), None) => m.into_iter().collect(),
        (v @ serde_json::Value::Array(_), None) => vec![(only().with_context(|| format!("--input {shown}"))?, v)],
        (v, None) => vec![(only().with_context(|| format!("--input {shown}"))?, v)],
    };
    let mut out = Vec::new();
    for (n, v) in items {
        let Some(spec) = specs.iter().find(|s| s.name == n) else {
            // Unknown names are reported with the other extra tensors; keep the value's shape.
            out.push((n.clone(), json_tensor(&v, DType::F32).with_context(|| format!("--input {shown}, {n:?}"))?));
            continue;
        };
        out.push((n.clone(), json_tensor(&v, spec.dtype).with_context(|| format!("--input {shown}, input {n:?}"))?));
    }
    Ok(out)
}

/// A nested JSON list (or a number) as a tensor of `dtype`; the shape is the nesting.
fn json_tensor(v: &serde_json::Value, dtype: DType) -> Result<Tensor> {
    let mut shape = Vec::new();
    let mut node = v;
    while let serde_json::Value::Array(items) = node {
        shape.push(items.len());
        match items.first() {
            Some(first) => node = first,
            None => break,
        }
    }
    let mut flat = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, shape: &[usize], depth: usize, flat: &mut Vec<&'a serde_json::Value>) -> Result<()> {
        match (v, shape.get(depth)) {
            (serde_json::Value::Array(items), Some(&n)) => {
                if items.len() != n {
                    bail!("ragged lists: a list of {} where the first at that depth has {n}", items.len());
                }
                items.iter().try_for_each(|i| walk(i, shape, depth + 1, flat))
            }
            (serde_json::Value::Array(_), None) => bail!("ragged lists: a list nested deeper than the first element"),
            (_, Some(_)) => bail!("ragged lists: a value where a list of {} was expected", shape[depth]),
            (x, None) => {
                flat.push(x);
                Ok(())
            }
        }
    }
    walk(v, &shape, 0, &mut flat)?;
    let num = |x: &serde_json::Value| x.as_f64().with_context(|| format!("expected a number, got {x}"));
    let int = |x: &serde_json::Value| x.as_i64().with_context(|| format!("expected an integer for a {dtype} input, got {x}"));
    let t = match dtype {
        DType::F32 => Tensor::from_vec(shape, flat.iter().map(|x| num(x).map(|f| f as f32)).collect::<Result<Vec<_>>>()?)?,
        DType::F64 => Tensor::from_vec(shape, flat.iter().map(|x| num(x)).collect::<Result<Vec<_>>>()?)?,
        DType::BF16 => Tensor::from_vec(shape, flat.iter().map(|x| num(x).map(half::bf16::from_f64)).collect::<Result<Vec<_>>>()?)?,
        DType::F16 => Tensor::from_vec(shape, flat.iter().map(|x| num(x).map(half::f16::from_f64)).collect::<Result<Vec<_>>>()?)?,
        DType::Bool => Tensor::from_bools(shape, flat.iter().map(|x| x.as_bool().with_context(|| format!("expected true or false, got {x}"))).collect::<Result<Vec<_>>>()?.as_slice())?,
        DType::I8 => Tensor::from_vec(shape, ints::<i8>(&flat, &int)?)?,
        DType::I16 => Tensor::from_vec(shape, ints::<i16>(&flat, &int)?)?,
        DType::I32 => Tensor::from_vec(shape, ints::<i32>(&flat, &int)?)?,
        DType::I64 => Tensor::from_vec(shape, ints::<i64>(&flat, &int)?)?,
        DType::U8 => Tensor::from_vec(shape, ints::<u8>(&flat, &int)?)?,
        DType::U16 => Tensor::from_vec(shape, ints::<u16>(&flat, &int)?)?,
        DType::U32 => Tensor::from_vec(shape, ints::<u32>(&flat, &int)?)?,
        DType::U64 => Tensor::from_vec(
            shape,
            flat.iter().map(|x| x.as_u64().with_context(|| format!("expected a non-negative integer, got {x}"))).collect::<Result<Vec<_>>>()?,
        )?,
        other => bail!("{other} inputs cannot be given as JSON"),
    };
    Ok(t)
}

fn ints<T: TryFrom<i64> + flaxlayer::Element>(flat: &[&serde_json::Value], int: &dyn Fn(&serde_json::Value) -> Result<i64>) -> Result<Vec<T>> {
    flat.iter()
        .map(|x| {
            let i = int(x)?;
            T::try_from(i).map_err(|_| anyhow::anyhow!("{i} does not fit in {}", T::DTYPE))
        })
        .collect()
}

pub fn run(args: RunArgs, common: &crate::Common) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    // Where the results go is checked before anything is built or run.
    for (flag, path) in [("--output", &args.output), ("--save-variables", &args.save_variables)] {
        if let Some(p) = path {
            check_writable(flag, p)?;
        }
    }
    let mode = Mode::from_training(args.training);
    let mut layer = build_layer(&args, common)?;
    let specs = layer.input_specs(mode).into_iter().next().context("the method has no computations")?;
    let inputs = match (args.zeros, args.random) {
        (true, _) => synthetic_inputs(&layer, mode, args.batch, Fill::Zeros)?,
        (false, Some(seed)) => synthetic_inputs(&layer, mode, args.batch, Fill::Random(seed))?,
        (false, None) => named_inputs(&layer, &args, &specs)?,
    };
    let mut outputs = PyTree::None;
    for _ in 0..args.steps {
        outputs = layer.call(&inputs, mode)?;
    }
    let named: Vec<(String, &Tensor)> = outputs.flatten_with_paths("outputs");
    if let Some(path) = &args.output {
        write_safetensors(path, &named, None).with_context(|| format!("writing --output {}", path.display()))?;
        eprintln!("wrote {} output(s) to {}", named.len(), path.display());
    }
    match (args.print, &args.output) {
        (Some(PrintFormat::Json), _) => print_json(&named)?,
        (Some(PrintFormat::Table), _) | (None, None) => print_table(&named)?,
        (None, Some(_)) => {}
    }
    if let Some(path) = &args.save_variables {
        let vars = layer.variables()?;
        let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(path, &refs, None)?;
        eprintln!("wrote {} variable(s) to {}", refs.len(), path.display());
    }
    Ok(())
}

/// The `--input` files as the method's input tree: every input present, extra tensors
/// refused (or dropped with --ignore-extra), each error naming the file.
fn named_inputs(layer: &FlaxLayer, args: &RunArgs, specs: &[TensorSpec]) -> Result<PyTree> {
    let given = read_inputs(args, specs)?;
    let wanted: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut leaves = Vec::new();
    for (name, t, file) in given {
        if let Some(first) = seen.get(&name) {
            bail!("input {name:?} is given twice: in {first} and in {file}; keep one");
        }
        seen.insert(name.clone(), file.clone());
        if !wanted.contains(&name.as_str()) {
            if args.ignore_extra {
                eprintln!("note: ignoring tensor {name:?} of {file}: not an input of method {}", layer.method());
                continue;
            }
            bail!(
                "{file}: tensor {name:?} is not an input of method {} of {}, which takes {}: remove the extra tensor from the file or pass --ignore-extra",
                layer.method(), args.bundle.display(), takes_any(layer)
            );
        }
        leaves.push((name, t));
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !seen.contains_key(*w)).collect();
    if !missing.is_empty() {
        let files = args.input.join(", ");
        bail!(
            "{files}: missing input(s) {}: method {} of {} takes {}; add them (safetensors tensors named by input, NAME=FILE.npy, or a JSON object)",
            missing.join(", "), layer.method(), args.bundle.display(), takes_any(layer)
        );
    }
    Ok(PyTree::from_named_leaves(layer.input_tree(), "inputs", leaves)?)
}

/// How many rows and columns a table shows of each output.
const TABLE_ROWS: usize = 20;
const TABLE_COLS: usize = 10;

fn print_table(named: &[(String, &Tensor)]) -> Result<()> {
    for (name, t) in named {
        outln!("{name}: {}{:?}", t.dtype(), t.shape());
        let values = element_texts(t);
        let cols = t.shape().last().copied().unwrap_or(1).max(1);
        let rows = if t.shape().is_empty() { 1 } else { values.len() / cols };
        let width = values.iter().map(String::len).max().unwrap_or(1);
        for r in 0..rows.min(TABLE_ROWS) {
            let row = &values[r * cols..(r + 1) * cols];
            let mut line: Vec<String> = row.iter().take(TABLE_COLS).map(|v| format!("{v:>width$}")).collect();
            if cols > TABLE_COLS {
                line.push(format!("… ({} more)", cols - TABLE_COLS));
            }
            outln!("  {}", line.join("  "));
        }
        if rows > TABLE_ROWS {
            outln!("  … ({} more rows; --print json or --output FILE for all)", rows - TABLE_ROWS);
        }
    }
    Ok(())
}

/// Each element as text: floats with 6 significant digits, integers and bools as they are.
fn element_texts(t: &Tensor) -> Vec<String> {
    match t.dtype() {
        DType::Bool => t.to_bools().unwrap_or_default().iter().map(ToString::to_string).collect(),
        d if d.is_float() => t.to_f64_vec().iter().map(|v| format!("{v:.6}")).collect(),
        _ => json_values(t).iter().map(ToString::to_string).collect(),
    }
}

/// The elements as JSON values (exact for every integer type).
fn json_values(t: &Tensor) -> Vec<serde_json::Value> {
    use serde_json::Value;
    fn to<T: flaxlayer::Element + Into<Value>>(t: &Tensor) -> Vec<Value> {
        t.to_vec::<T>().unwrap_or_default().into_iter().map(Into::into).collect()
    }
    match t.dtype() {
        DType::Bool => t.to_bools().unwrap_or_default().into_iter().map(Value::Bool).collect(),
        DType::I8 => to::<i8>(t),
        DType::I16 => to::<i16>(t),
        DType::I32 => to::<i32>(t),
        DType::I64 => to::<i64>(t),
        DType::U8 => to::<u8>(t),
        DType::U16 => to::<u16>(t),
        DType::U32 => to::<u32>(t),
        DType::U64 => to::<u64>(t),
        _ => t.to_f64_vec().into_iter().map(|v| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)).collect(),
    }
}

/// Nests flat values by shape.
fn nest(values: &[serde_json::Value], shape: &[usize]) -> serde_json::Value {
    match shape {
        [] => values.first().cloned().unwrap_or(serde_json::Value::Null),
        [_] => serde_json::Value::Array(values.to_vec()),
        [n, rest @ ..] => {
            let step = rest.iter().product::<usize>();
            serde_json::Value::Array((0..*n).map(|i| nest(&values[i * step..(i + 1) * step], rest)).collect())
        }
    }
}

fn print_json(named: &[(String, &Tensor)]) -> Result<()> {
    let mut obj = serde_json::Map::new();
    for (name, t) in named {
        obj.insert(
            name.clone(),
            serde_json::json!({"dtype": t.dtype().as_str(), "shape": t.shape(), "data": nest(&json_values(t), t.shape())}),
        );
    }
    outln!("{}", serde_json::Value::Object(obj));
    Ok(())
}
