//! `flaxlayer inspect`'s file list: what each file of a bundle costs on disk and what it is.

use std::collections::BTreeMap;

use anyhow::Result;
use flaxlayer::bundle::ComputationSpec;
use flaxlayer::Bundle;

/// What each file the manifest names is: `(file name, description)`.
fn roles(bundle: &Bundle) -> BTreeMap<String, String> {
    let m = bundle.manifest();
    let mut r = BTreeMap::new();
    r.insert("manifest.json".to_string(), "manifest".to_string());
    r.insert("variables.safetensors".to_string(), "weights: the bundled variables (params and state)".to_string());
    r.insert("golden.safetensors".to_string(), "golden test data: inputs and JAX's outputs (not needed to deploy)".to_string());
    r.insert("init_inputs.safetensors".to_string(), "the inputs data-dependent init reads".to_string());
    if let Some(init) = m.init() {
        r.insert(init.computation().file().to_string(), "init computation".to_string());
    }
    let batch = |c: &ComputationSpec| c.batch_size().map_or(String::new(), |b| format!(" b{b}"));
    for (name, method) in m.methods() {
        for c in method.inference() {
            r.insert(c.file().to_string(), format!("computation: {name} inference{}", batch(c)));
            if let Some(f) = c.frozen() {
                r.insert(f.file().to_string(), format!("frozen copy: {name} inference{} with the params compiled in as constants", batch(f)));
            }
        }
        for c in method.training() {
            r.insert(c.file().to_string(), format!("computation: {name} training{}", batch(c)));
        }
    }
    if let Some(t) = m.train() {
        for (what, c) in [("optimizer init", t.init_opt_state()), ("train step", t.train_step()), ("eval step", t.eval_step())] {
            r.insert(c.file().to_string(), format!("computation: {what}{}", batch(c)));
        }
    }
    for c in m.computations() {
        r.entry(c.file().to_string()).or_insert_with(|| "computation".to_string());
    }
    r
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Prints every regular file of the bundle directory with its size and role, then the totals
/// by kind (weights, frozen copies, per-computation exports, golden data).
pub fn print_files(bundle: &Bundle) -> Result<()> {
    let roles = roles(bundle);
    let mut files: Vec<(String, u64)> = Vec::new();
    for e in std::fs::read_dir(bundle.dir())? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() {
            files.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    crate::outln!("files ({} in {} files):", human(total), files.len());
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, n) in &files {
        let role = roles.get(name).map_or("not named by the manifest", String::as_str);
        let kind = match role.split(':').next().unwrap_or("") {
            "weights" => "weights",
            "frozen copy" => "frozen copies",
            "golden test data" => "golden data",
            r if r.starts_with("computation") || r == "init computation" => "computations",
            _ => "other",
        };
        *by_kind.entry(kind).or_default() += n;
        let share = if total > 0 { 100.0 * *n as f64 / total as f64 } else { 0.0 };
        crate::outln!("  {name:<44} {:>10} {share:>5.1}%  {role}", human(*n));
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {}", human(*n))).collect();
    crate::outln!("  by kind: {}", kinds.join(", "));
    Ok(())
}
