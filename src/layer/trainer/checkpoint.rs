//! Trainer checkpoints: a saved directory that is itself a bundle, with the variables, the
//! optimizer state and `trainer.json` (step count, key, seeds), written as a whole.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{OptStart, Trainer};
use crate::bundle::{Bundle, VARIABLES_FILE};
use crate::layer::options::{Options, Restore, VariablesSource};
use crate::layer::saved::{self, SAVE_ID_KEY};
use crate::tensor::{read_safetensors_with_metadata, write_safetensors};
use crate::{Error, Result, Tensor};

/// The file of [`Trainer::save`] that holds the step count, key and seeds.
pub const TRAINER_FILE: &str = "trainer.json";
/// The file of [`Trainer::save`] that holds the optimizer state, by `opt_state/...` name.
pub const OPT_STATE_FILE: &str = "opt_state.safetensors";
const TRAINER_FORMAT: &str = "flaxlayer.trainer";

/// What `trainer.json` holds. Older files may name a plugin: it is ignored.
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
    /// The id every file of this save carries.
    #[serde(default)]
    save_id: Option<String>,
}

impl Trainer {
    /// Saves a checkpoint into `dir`: the bundle's manifest and computations, the variables
    /// (`variables.safetensors`), the optimizer state ([`OPT_STATE_FILE`]) and
    /// [`TRAINER_FILE`] (step count, key, seeds). The directory is written next to `dir` and
    /// swapped in at once: the previous checkpoint stays whole until the new one is, so a
    /// crash leaves one of the two and [`Trainer::load`] resumes from it. The directory is
    /// itself a bundle, so a [`FlaxLayer`](crate::FlaxLayer) can be built on it and starts
    /// from the trained variables.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let vars = self.layer.variables()?;
        let opt = self.opt_state()?;
        let save_id = saved::new_save_id();
        let saved = SavedTrainer {
            format: TRAINER_FORMAT.into(),
            version: 1,
            seed: self.layer.seed(),
            shuffle_seed: self.shuffle_seed,
            steps: self.steps,
            key: self.layer.key()?,
            device: self.layer.device_index(),
            save_id: Some(save_id.clone()),
        };
        let write = |path: &Path, tensors: &[(String, Tensor)]| -> Result<()> {
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            write_safetensors(path, &refs, Some(HashMap::from([(SAVE_ID_KEY.to_string(), save_id.clone())])))
        };
        saved::write_dir(dir.as_ref(), |staging| {
            saved::copy_bundle(self.layer.bundle(), staging)?;
            write(&staging.join(VARIABLES_FILE), &vars)?;
            write(&staging.join(OPT_STATE_FILE), &opt)?;
            saved::write_json(&staging.join(TRAINER_FILE), &saved)
        })
    }

    /// Loads a checkpoint that [`Trainer::save`] wrote; training continues bit for bit as
    /// if it had not stopped. The plugin comes from the caller's environment; to choose the
    /// client or other options, use `Trainer::builder(dir).client(c).load()`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Trainer> {
        Trainer::builder(dir.as_ref()).load()
    }
}

impl Restore for Trainer {
    /// The checkpoint in `bundle`'s directory: variables, optimizer state, key, step count
    /// and seeds; the options' client, device and compile settings.
    fn restore(bundle: Arc<Bundle>, options: Options) -> Result<Trainer> {
        let dir = bundle.dir().to_path_buf();
        let saved: SavedTrainer = saved::read_json(&dir.join(TRAINER_FILE), TRAINER_FORMAT)?;
        let read = |file: &str| -> Result<Vec<(String, Tensor)>> {
            let p = dir.join(file);
            let (tensors, meta) = read_safetensors_with_metadata(&p)?;
            match &saved.save_id {
                Some(id) => saved::check_save_id(&p, meta.get(SAVE_ID_KEY), id)?,
                None => legacy_step_check(&p, meta.get("step"), saved.steps)?,
            }
            Ok(tensors)
        };
        let (variables, opt_state) = (read(VARIABLES_FILE)?, read(OPT_STATE_FILE)?);
        let options = Options {
            variables: VariablesSource::Given(variables),
            seed: Some(saved.seed),
            key: Some(saved.key),
            device: saved.device,
            shuffle_seed: Some(saved.shuffle_seed),
            ..options
        };
        Trainer::assemble(bundle, options, OptStart::Saved(opt_state), saved.steps)
    }
}

/// Checkpoints written before save ids tie their files together by the step count.
fn legacy_step_check(path: &Path, step: Option<&String>, steps: u64) -> Result<()> {
    if step.map(String::as_str) == Some(steps.to_string().as_str()) {
        return Ok(());
    }
    Err(Error::format(
        path.display().to_string(),
        format!("is from step {} but {TRAINER_FILE} from step {steps}: a torn checkpoint", step.map_or("(none)", String::as_str)),
    ))
}
