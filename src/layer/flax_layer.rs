//! [`FlaxLayer`]'s Keras face: its builders (`builder`, and `jax_layer` for Keras'
//! `JaxLayer` arguments), its config, and saving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jax_layer::FlaxLayer;
use super::options::{Build, Builder, BundleSource, Options, Restore, VariablesSource};
use super::saved::{self, SAVE_ID_KEY};
use crate::bundle::{Bundle, VARIABLES_FILE};
use crate::tensor::{read_safetensors_with_metadata, write_safetensors};
use crate::{Error, Result, Tensor};

/// The file that [`FlaxLayer::save`] writes beside the bundle and the variables.
pub const LAYER_FILE: &str = "layer.json";
const LAYER_FORMAT: &str = "flaxlayer.layer";


/// What [`FlaxLayer::get_config`] returns: enough to rebuild the layer, without its trained
/// weights, as in Keras. The plugin is not part of it: a config (or a saved layer) never
/// names native code to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlaxLayerConfig {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The method the layer calls.
    pub method: String,
    /// The seed of the key (and of `init` when it runs).
    pub seed: u64,
    /// The device index.
    #[serde(default)]
    pub device: usize,
}

impl FlaxLayerConfig {
    /// The config as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::json("layer config", e))
    }

    /// A config from JSON.
    pub fn from_json(s: &str) -> Result<FlaxLayerConfig> {
        serde_json::from_str(s).map_err(|e| Error::json("layer config", e))
    }
}

/// What `layer.json` holds. Older files may name a plugin: it is ignored.
#[derive(Debug, Serialize, Deserialize)]
struct SavedLayer {
    format: String,
    version: u32,
    config: FlaxLayerConfig,
    key: [u32; 2],
    /// The id every file of this save carries (absent in files of older versions).
    #[serde(default)]
    save_id: Option<String>,
}

impl FlaxLayer {
    /// Starts building a layer over a bundle directory or an opened [`Bundle`].
    ///
    /// ```no_run
    /// # fn main() -> flaxlayer::Result<()> {
    /// let layer = flaxlayer::FlaxLayer::builder("hlo/mlp").seed(0).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(bundle: impl Into<BundleSource>) -> Builder<FlaxLayer> {
        Builder::new(bundle)
    }

    /// Keras' `JaxLayer(call_fn, init_fn, params=None, state=None, seed=None)`, over a bundle:
    /// the bundle's exported computations are `call_fn` and `init_fn` (inference
    /// `(params, state, inputs) -> (outputs, new_state)`, training with the key, and
    /// `init(key, inputs) -> variables`: docs/bundle-format.md). As in Keras, the params and
    /// the state are given apart, or neither:
    ///
    /// - neither (`None`, `None`): `init` runs on the device under the seed
    ///   ([`Builder::init_variables`]), as Keras' `JaxLayer` calls `init_fn`;
    /// - params only: a model without state (the build fails if the bundle has state);
    /// - both: every variable, by Flax path.
    ///
    /// Every param must be in the `params` collection and every state leaf outside it
    /// ([`InvalidArgument`](Error::InvalidArgument) naming the first that is not); the build
    /// then checks every name, dtype and shape against the bundle. The result is the same
    /// [`FlaxLayer`] as [`FlaxLayer::builder`] gives, with all its methods.
    ///
    /// ```no_run
    /// # fn main() -> flaxlayer::Result<()> {
    /// let trained = flaxlayer::Tensor::read_safetensors("trained.safetensors")?;
    /// let (params, state): (Vec<_>, Vec<_>) = trained.into_iter().partition(|(name, _)| name.starts_with("params/"));
    /// let layer = flaxlayer::FlaxLayer::jax_layer("hlo/cnn", Some(params), Some(state))?.seed(0).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn jax_layer(
        bundle: impl Into<BundleSource>,
        params: Option<Vec<(String, Tensor)>>,
        state: Option<Vec<(String, Tensor)>>,
    ) -> Result<Builder<FlaxLayer>> {
        let builder = Builder::new(bundle);
        let (params, state) = match (params, state) {
            (None, None) => return Ok(builder.init_variables()),
            (None, Some(_)) => {
                return Err(Error::invalid("params", "is None while state is given: give the params too, or neither (init runs)"))
            }
            (Some(params), state) => (params, state.unwrap_or_default()),
        };
        let collection = |name: &str| name.split('/').next().unwrap_or_default().to_string();
        if let Some((name, _)) = params.iter().find(|(n, _)| collection(n) != "params") {
            return Err(Error::invalid(format!("params leaf {name:?}"), "is not in the `params` collection (it is state)"));
        }
        if let Some((name, _)) = state.iter().find(|(n, _)| collection(n) == "params") {
            return Err(Error::invalid(format!("state leaf {name:?}"), "is in the `params` collection (it is a param)"));
        }
        Ok(builder.variables(params.into_iter().chain(state).collect()))
    }

    /// The layer's config.
    pub fn get_config(&self) -> FlaxLayerConfig {
        FlaxLayerConfig {
            bundle: self.bundle().dir().to_path_buf(),
            method: self.method().to_string(),
            seed: self.seed(),
            device: self.device_index(),
        }
    }

    /// A new layer from a config, on the plugin that [`crate::pjrt::Plugin::load`] finds:
    /// the bundle's variables (or its `init` under the config's seed when it has none), and
    /// the seed's key.
    pub fn from_config(config: &FlaxLayerConfig) -> Result<FlaxLayer> {
        FlaxLayer::builder(&config.bundle).method(&config.method).seed(config.seed).device(config.device).build()
    }

    /// Saves the layer into `dir` as a whole: the bundle's manifest and computations, the
    /// variables (`variables.safetensors`, by Flax path) and `layer.json` (config and key).
    /// The directory is written next to `dir` and swapped in at once, so a crash leaves the
    /// old save or the new one.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let vars = self.variables()?;
        let key = self.key()?;
        let save_id = saved::new_save_id();
        let mut config = self.get_config();
        config.bundle = PathBuf::from(".");
        saved::write_dir(dir.as_ref(), |staging| {
            saved::copy_bundle(self.bundle(), staging)?;
            let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let meta = HashMap::from([(SAVE_ID_KEY.to_string(), save_id.clone())]);
            write_safetensors(staging.join(VARIABLES_FILE), &refs, Some(meta))?;
            let saved = SavedLayer { format: LAYER_FORMAT.into(), version: 1, config, key, save_id: Some(save_id.clone()) };
            saved::write_json(&staging.join(LAYER_FILE), &saved)
        })
    }

    /// Loads a layer that [`FlaxLayer::save`] wrote: same outputs, variables and key, on the
    /// plugin of the caller's environment. To choose the client or other options, use
    /// `FlaxLayer::builder(dir).client(c).load()`.
    pub fn load(dir: impl AsRef<Path>) -> Result<FlaxLayer> {
        FlaxLayer::builder(dir.as_ref()).load()
    }
}

impl Restore for FlaxLayer {
    /// The saved layer in `bundle`'s directory: its variables, key, method and seed; the
    /// options' client, device and compile settings.
    fn restore(bundle: Arc<Bundle>, options: Options) -> Result<FlaxLayer> {
        let dir = bundle.dir().to_path_buf();
        let saved: SavedLayer = saved::read_json(&dir.join(LAYER_FILE), LAYER_FORMAT)?;
        let vars_path = dir.join(VARIABLES_FILE);
        let (variables, meta) = read_safetensors_with_metadata(&vars_path)?;
        if let Some(id) = &saved.save_id {
            saved::check_save_id(&vars_path, meta.get(SAVE_ID_KEY), id)?;
        }
        let options = Options {
            method: Some(saved.config.method),
            variables: VariablesSource::Given(variables),
            seed: Some(saved.config.seed),
            key: Some(saved.key),
            device: saved.config.device,
            ..options
        };
        FlaxLayer::build(bundle, options)
    }
}

static_assertions::assert_impl_all!(FlaxLayer: Send, Sync);
