//! `FlaxLayer`: the Rust counterpart of Keras' `keras.layers.FlaxLayer`, over a bundle that
//! the exporter (`flaxlayer_export.export_flax`) wrote: a [`JaxLayer`] with Flax's naming of
//! weights, a config, and saving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::inputs::AsInputs;
use super::jax_layer::JaxLayer;
use super::mode::Mode;
use super::options::{Build, Builder, BundleSource, Options, VariablesSource};
use super::saved::{self, SAVE_ID_KEY};
use crate::bundle::{Bundle, VARIABLES_FILE};
use crate::pjrt::Client;
use crate::pytree::PyTree;
use crate::spec::TensorSpec;
use crate::tensor::{read_safetensors_with_metadata, write_safetensors};
use crate::{Error, Result, Tensor};

/// The file that [`FlaxLayer::save`] writes beside the bundle and the variables.
pub const LAYER_FILE: &str = "layer.json";
const LAYER_FORMAT: &str = "flaxlayer.layer";

/// A Flax module's exported method, run on a PJRT device. Params are the `params`
/// collection; every other collection (`batch_stats`, `cache`, ...) is non-trainable state,
/// as with Keras' `FlaxLayer` (`mutable=DenyList(["params"])`).
///
/// It starts from the bundle's own variables (what the exporter bundled), or runs the
/// bundle's `init` on the device when asked ([`Builder::init_variables`]) or when the bundle
/// has none. [`FlaxLayer::as_jax_layer`] gives the general [`JaxLayer`] underneath.
#[derive(Debug)]
pub struct FlaxLayer {
    layer: JaxLayer,
}

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

impl Build for FlaxLayer {
    fn build(bundle: Arc<Bundle>, options: Options) -> Result<FlaxLayer> {
        Ok(FlaxLayer { layer: JaxLayer::new(bundle, options)? })
    }
}

impl From<JaxLayer> for FlaxLayer {
    fn from(layer: JaxLayer) -> FlaxLayer {
        FlaxLayer { layer }
    }
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

    /// The general layer underneath.
    pub fn as_jax_layer(&self) -> &JaxLayer {
        &self.layer
    }

    /// The general layer underneath, mutably.
    pub fn as_jax_layer_mut(&mut self) -> &mut JaxLayer {
        &mut self.layer
    }

    /// The general layer underneath, by value.
    pub fn into_jax_layer(self) -> JaxLayer {
        self.layer
    }

    /// The bundle.
    pub fn bundle(&self) -> &Arc<Bundle> {
        self.layer.bundle()
    }

    /// The method this layer calls.
    pub fn method(&self) -> &str {
        self.layer.method()
    }

    /// The PJRT client.
    pub fn client(&self) -> &Client {
        self.layer.client()
    }

    /// Calls the layer: see [`JaxLayer::call`].
    pub fn call(&mut self, inputs: impl AsInputs, mode: Mode) -> Result<PyTree> {
        self.layer.call(inputs, mode)
    }

    /// An inference call from `&self`, for several threads: see [`JaxLayer::predict`].
    pub fn predict(&self, inputs: impl AsInputs) -> Result<PyTree> {
        self.layer.predict(inputs)
    }

    /// Copies every variable to the host, by Flax path: see [`JaxLayer::variables`].
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        self.layer.variables()
    }

    /// Replaces named variables: see [`JaxLayer::set_variables`].
    pub fn set_variables(&mut self, variables: &[(String, Tensor)]) -> Result<()> {
        self.layer.set_variables(variables)
    }

    /// The current RNG key data.
    pub fn key(&self) -> Result<[u32; 2]> {
        self.layer.key()
    }

    /// Replaces the RNG key data.
    pub fn set_key(&mut self, key: [u32; 2]) -> Result<()> {
        self.layer.set_key(key)
    }

    /// The tree structure of the method's inputs: see [`JaxLayer::input_tree`].
    pub fn input_tree(&self) -> &crate::pytree::TreeDef {
        self.layer.input_tree()
    }

    /// The `params` collection's leaves, as Keras' `trainable_weights`.
    pub fn trainable_weights(&self) -> Vec<TensorSpec> {
        self.layer.trainable_weights()
    }

    /// Every other collection's leaves (`batch_stats`, `cache`, ...).
    pub fn non_trainable_weights(&self) -> Vec<TensorSpec> {
        self.layer.non_trainable_weights()
    }

    /// The number of scalars in all weights, as Keras' `count_params()`.
    pub fn count_params(&self) -> u64 {
        self.layer.count_params()
    }

    /// The layer's config.
    pub fn get_config(&self) -> FlaxLayerConfig {
        FlaxLayerConfig {
            bundle: self.layer.bundle().dir().to_path_buf(),
            method: self.layer.method().to_string(),
            seed: self.layer.seed(),
            device: self.layer.device_index(),
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
            saved::copy_bundle(self.layer.bundle(), staging)?;
            let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let meta = HashMap::from([(SAVE_ID_KEY.to_string(), save_id.clone())]);
            write_safetensors(staging.join(VARIABLES_FILE), &refs, Some(meta))?;
            let saved = SavedLayer { format: LAYER_FORMAT.into(), version: 1, config, key, save_id: Some(save_id.clone()) };
            saved::write_json(&staging.join(LAYER_FILE), &saved)
        })
    }

    /// Loads a layer that [`FlaxLayer::save`] wrote: same outputs, variables and key. The
    /// plugin comes from the caller's environment, as for a new layer.
    pub fn load(dir: impl AsRef<Path>) -> Result<FlaxLayer> {
        FlaxLayer::load_with(dir, None)
    }

    /// [`FlaxLayer::load`] on a given client.
    pub fn load_with(dir: impl AsRef<Path>, client: Option<Client>) -> Result<FlaxLayer> {
        let dir = dir.as_ref();
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
            client,
            ..Options::default()
        };
        FlaxLayer::build(Arc::new(Bundle::open(dir)?), options)
    }
}
