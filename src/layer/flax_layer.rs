//! `FlaxLayer`: the Rust counterpart of Keras' `keras.layers.FlaxLayer`, over a bundle that
//! `scripts/export_flax.py` wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cache::CacheSetting;
use super::jax_layer::{JaxLayer, LayerOptions};
use super::saved;
use crate::bundle::{Bundle, VARIABLES_FILE};
use crate::pjrt::Client;
use crate::tensor::write_safetensors;
use crate::{Error, Result, Tensor};

/// The file that [`FlaxLayer::save`] writes beside the bundle and the variables.
pub const LAYER_FILE: &str = "layer.json";
const LAYER_FORMAT: &str = "flaxlayer.layer";

/// A Flax module's exported methods, run on a PJRT device. Params are the `params`
/// collection; every other collection (`batch_stats`, `cache`, ...) is non-trainable state,
/// as with Keras' `FlaxLayer` (`mutable=DenyList(["params"])`).
///
/// It dereferences to [`JaxLayer`], which has `call`, `predict`, `variables`, ...
#[derive(Debug)]
pub struct FlaxLayer {
    inner: JaxLayer,
}

impl std::ops::Deref for FlaxLayer {
    type Target = JaxLayer;
    fn deref(&self) -> &JaxLayer {
        &self.inner
    }
}

impl std::ops::DerefMut for FlaxLayer {
    fn deref_mut(&mut self) -> &mut JaxLayer {
        &mut self.inner
    }
}

/// What [`FlaxLayer::get_config`] returns: enough to rebuild the layer (without its trained
/// weights, as in Keras).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlaxLayerConfig {
    /// The bundle directory.
    pub bundle: PathBuf,
    pub method: String,
    pub seed: u64,
    #[serde(default)]
    pub device: usize,
    #[serde(default)]
    pub plugin: Option<PathBuf>,
}

impl FlaxLayerConfig {
    /// The config as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json { what: "layer config".into(), source })
    }

    /// A config from JSON.
    pub fn from_json(s: &str) -> Result<FlaxLayerConfig> {
        serde_json::from_str(s).map_err(|source| Error::Json { what: "layer config".into(), source })
    }
}

/// What `layer.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct SavedLayer {
    format: String,
    version: u32,
    config: FlaxLayerConfig,
    key: [u32; 2],
}

/// Where the bundle comes from: a directory or an opened bundle.
pub enum BundleSource {
    Path(PathBuf),
    Bundle(Arc<Bundle>),
}

macro_rules! path_source {
    ($($t:ty),*) => {$(
        impl From<$t> for BundleSource {
            fn from(p: $t) -> Self {
                BundleSource::Path(AsRef::<Path>::as_ref(&p).to_path_buf())
            }
        }
    )*};
}
path_source!(&Path, PathBuf, &PathBuf, &str, String, &String);

impl From<Bundle> for BundleSource {
    fn from(b: Bundle) -> Self {
        BundleSource::Bundle(Arc::new(b))
    }
}

impl From<Arc<Bundle>> for BundleSource {
    fn from(b: Arc<Bundle>) -> Self {
        BundleSource::Bundle(b)
    }
}

/// Builds a [`FlaxLayer`]; see [`FlaxLayer::builder`].
pub struct FlaxLayerBuilder {
    source: BundleSource,
    options: LayerOptions,
}

impl FlaxLayerBuilder {
    /// The method to call (a method name, or the exported name of an unbound function);
    /// default: the bundle's default method.
    pub fn method(mut self, name: impl Into<String>) -> Self {
        self.options.method = Some(name.into());
        self
    }

    /// Initial variables by Flax path (`params/Dense_0/kernel`, ...): all of them. Without
    /// them, the bundle's `init` runs on the device with the seed.
    pub fn variables(mut self, variables: Vec<(String, Tensor)>) -> Self {
        self.options.variables = Some(variables);
        self
    }

    /// Initial variables from a safetensors file, read at `build()` and uploaded straight
    /// from the file's bytes (no intermediate host tensors).
    pub fn variables_file(mut self, path: impl AsRef<Path>) -> Self {
        self.options.variables_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// The seed of `init` and of the RNG key (`jax.random.key(seed)`); default: the bundle's.
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = Some(seed);
        self
    }

    /// The device index; default 0.
    pub fn device(mut self, index: usize) -> Self {
        self.options.device = index;
        self
    }

    /// The PJRT plugin `.so`; default `$PJRT_PLUGIN_PATH`, else the installed CPU plugin.
    pub fn plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.plugin = Some(path.into());
        self
    }

    /// Where compiled executables are cached: by default `$FLAXLAYER_CACHE`, else the user's
    /// cache directory (`FLAXLAYER_CACHE=0` turns it off).
    pub fn compile_cache(mut self, setting: CacheSetting) -> Self {
        self.options.cache = setting;
        self
    }

    /// Shares an existing PJRT client.
    pub fn client(mut self, client: Client) -> Self {
        self.options.client = Some(client);
        self
    }

    /// Opens the bundle, compiles the method, and sets up variables and key.
    pub fn build(self) -> Result<FlaxLayer> {
        let bundle = match self.source {
            BundleSource::Path(p) => Arc::new(Bundle::open(p)?),
            BundleSource::Bundle(b) => b,
        };
        Ok(FlaxLayer { inner: JaxLayer::new(bundle, self.options)? })
    }
}

impl FlaxLayer {
    /// Starts building a layer over a bundle directory or an opened [`Bundle`].
    pub fn builder(bundle: impl Into<BundleSource>) -> FlaxLayerBuilder {
        FlaxLayerBuilder { source: bundle.into(), options: LayerOptions::default() }
    }

    /// The layer's config.
    pub fn get_config(&self) -> FlaxLayerConfig {
        FlaxLayerConfig {
            bundle: self.bundle().dir().to_path_buf(),
            method: self.method().to_string(),
            seed: self.seed(),
            device: self.device_index(),
            plugin: Some(self.client().plugin().path().to_path_buf()),
        }
    }

    /// A new layer from a config: the bundle's `init` runs with the config's seed.
    pub fn from_config(config: &FlaxLayerConfig) -> Result<FlaxLayer> {
        let mut b = FlaxLayer::builder(&config.bundle).method(&config.method).seed(config.seed).device(config.device);
        if let Some(p) = &config.plugin {
            b = b.plugin(p);
        }
        b.build()
    }

    /// Saves the layer into `dir`: the bundle's manifest and computations, the variables
    /// (`variables.safetensors`, by Flax path) and `layer.json` (config and key). Every file is
    /// written to a temporary name and renamed; `layer.json` comes last.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        saved::copy_bundle(self.bundle(), dir)?;
        let vars = self.variables()?;
        let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(dir.join(VARIABLES_FILE), &refs, None)?;
        let mut config = self.get_config();
        config.bundle = PathBuf::from(".");
        let saved = SavedLayer { format: LAYER_FORMAT.into(), version: 1, config, key: self.key()? };
        saved::write_json(&dir.join(LAYER_FILE), &saved)
    }

    /// Loads a layer that [`FlaxLayer::save`] wrote: same outputs, variables and key.
    pub fn load(dir: impl AsRef<Path>) -> Result<FlaxLayer> {
        FlaxLayer::load_with(dir, None)
    }

    /// [`FlaxLayer::load`] on a given client.
    pub fn load_with(dir: impl AsRef<Path>, client: Option<Client>) -> Result<FlaxLayer> {
        let dir = dir.as_ref();
        let saved: SavedLayer = saved::read_json(&dir.join(LAYER_FILE), LAYER_FORMAT)?;
        let options = LayerOptions {
            method: Some(saved.config.method),
            variables: None,
            variables_file: Some(dir.join(VARIABLES_FILE)),
            seed: Some(saved.config.seed),
            key: Some(saved.key),
            device: saved.config.device,
            plugin: if client.is_some() { None } else { saved.config.plugin.filter(|p| p.is_file()) },
            client,
            cache: CacheSetting::default(),
        };
        Ok(FlaxLayer { inner: JaxLayer::new(Arc::new(Bundle::open(dir)?), options)? })
    }
}
