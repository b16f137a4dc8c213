//! The one builder of [`FlaxLayer`](super::FlaxLayer) and [`Trainer`](super::Trainer):
//! which bundle, which method, where the variables and the key come from, and where it runs.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::CacheSetting;
use super::computation::CompileHow;
use super::isolate::Isolation;
use crate::bundle::Bundle;
use crate::pjrt::Client;
use crate::{Result, Tensor};

/// The environment variable that sets how many virtual devices a CPU client has.
pub const CPU_DEVICES_ENV: &str = "FLAXLAYER_CPU_DEVICES";

/// Where the bundle comes from: a directory or an opened bundle.
#[derive(Debug, Clone)]
pub enum BundleSource {
    /// A bundle directory, opened at `build()`.
    Path(PathBuf),
    /// An opened bundle (shared between layers without reading it again).
    Bundle(Arc<Bundle>),
}

impl BundleSource {
    /// The bundle, opened if it is a path.
    pub fn open(self) -> Result<Arc<Bundle>> {
        match self {
            BundleSource::Path(p) => Ok(Arc::new(Bundle::open(p)?)),
            BundleSource::Bundle(b) => Ok(b),
        }
    }
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

/// Where a layer's variables come from.
#[derive(Debug, Clone, Default)]
pub enum VariablesSource {
    /// The bundle's own `variables.safetensors` (what the exporter bundled: the module's init
    /// under its seed, or the `variables=` it was given); `init` on the device when the bundle
    /// has none. The default, as Keras' `FlaxLayer(variables=...)`.
    #[default]
    Bundle,
    /// Run the bundle's `init` on the device with the seed, even when the bundle has
    /// variables.
    Init,
    /// These variables, by Flax path: all of them.
    Given(Vec<(String, Tensor)>),
    /// A safetensors file of variables by Flax path, uploaded straight from its bytes.
    File(PathBuf),
}

/// Everything a builder collects. The fields are public so that a program can keep one and
/// build several layers from it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The method to call; the bundle's default method when `None`.
    pub method: Option<String>,
    /// Where the variables come from.
    pub variables: VariablesSource,
    /// The seed of the RNG key (and of `init` when it runs); the bundle's seed when `None`.
    pub seed: Option<u64>,
    /// The key to start from instead of the seed's (resuming).
    pub key: Option<[u32; 2]>,
    /// The device index among the client's devices.
    pub device: usize,
    /// The PJRT plugin `.so`; see [`crate::pjrt::Plugin::load`] for the search order.
    pub plugin: Option<PathBuf>,
    /// A client to share instead of creating one.
    pub client: Option<Client>,
    /// Where compiled executables are cached.
    pub cache: CacheSetting,
    /// Compile in a child process with a time limit (bundles from elsewhere); see
    /// [`Isolation`].
    pub isolation: Option<Isolation>,
    /// On a CPU plugin, how many (virtual) devices the client has; the plugin's default (4)
    /// when `None`, or `$FLAXLAYER_CPU_DEVICES`. Ignored when a client is given.
    pub cpu_devices: Option<usize>,
    /// Trainer only: the seed of the batch order; the seed when `None`.
    pub shuffle_seed: Option<u64>,
    /// Never run the bundle's frozen inference computations (params compiled in); see
    /// [`Builder::without_frozen`].
    pub without_frozen: bool,
}

impl Options {
    /// How computations of `bundle` compile under these options.
    pub(crate) fn compile_how(&self, bundle: &Bundle) -> CompileHow {
        let shardy = bundle.manifest().partitioner.as_deref() != Some("gspmd");
        CompileHow { cache: self.cache.dir(), isolation: self.isolation.clone(), shardy }
    }

    /// The client these options name: the given one, or a new one on the plugin (with
    /// `cpu_devices` devices on a CPU plugin, or `$FLAXLAYER_CPU_DEVICES`, when asked).
    pub fn client(&self) -> Result<Client> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let from_env = || std::env::var(CPU_DEVICES_ENV).ok().and_then(|v| v.parse().ok());
        match self.cpu_devices.or_else(from_env) {
            Some(n) => Client::with_cpu_devices(self.plugin.as_deref(), n),
            None => Client::new(self.plugin.as_deref()),
        }
    }
}

/// Keeps [`Build`] (and so [`Restore`]) to the crate's own types.
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// What a [`Builder`] builds: [`FlaxLayer`](super::FlaxLayer) and
/// [`Trainer`](super::Trainer). Sealed.
pub trait Build: Sized + sealed::Sealed {
    /// Builds from an opened bundle and the options.
    fn build(bundle: Arc<Bundle>, options: Options) -> Result<Self>;
}

/// What a [`Builder`] can load from a saved directory ([`Builder::load`]). Sealed (through
/// [`Build`]).
pub trait Restore: Build {
    /// Restores the save in `bundle`'s directory under the options.
    fn restore(bundle: Arc<Bundle>, options: Options) -> Result<Self>;
}

/// Builds a [`FlaxLayer`](super::FlaxLayer) or a [`Trainer`](super::Trainer):
/// `FlaxLayer::builder(dir).seed(0).build()?`.
#[must_use = "a builder does nothing until .build()"]
pub struct Builder<T> {
    source: BundleSource,
    pub(crate) options: Options,
    target: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("source", &self.source).field("options", &self.options).finish()
    }
}

impl<T: Build> Builder<T> {
    /// A builder over a bundle directory or an opened bundle, with default options.
    pub fn new(bundle: impl Into<BundleSource>) -> Builder<T> {
        Builder { source: bundle.into(), options: Options::default(), target: PhantomData }
    }

    /// A builder with options collected elsewhere.
    pub fn with_options(bundle: impl Into<BundleSource>, options: Options) -> Builder<T> {
        Builder { source: bundle.into(), options, target: PhantomData }
    }

    /// The method to call (a method name, or the exported name of an unbound function);
    /// default: the bundle's default method.
    pub fn method(mut self, name: impl Into<String>) -> Self {
        self.options.method = Some(name.into());
        self
    }

    /// Start from these variables (by Flax path: `params/Dense_0/kernel`, ...), all of them.
    pub fn variables(mut self, variables: Vec<(String, Tensor)>) -> Self {
        self.options.variables = VariablesSource::Given(variables);
        self
    }

    /// Start from the variables of a safetensors file, uploaded straight from its bytes.
    pub fn variables_file(mut self, path: impl AsRef<Path>) -> Self {
        self.options.variables = VariablesSource::File(path.as_ref().to_path_buf());
        self
    }

    /// Always pass the params to inference, even when the bundle has frozen inference
    /// computations (exported with `frozen=True`, params compiled in as constants). By
    /// default a layer runs those while its params are the bundle's own: calls pass PJRT
    /// fewer arguments (see the README's "Frozen inference"). Opting out saves their compile
    /// time and the memory of their constants.
    pub fn without_frozen(mut self) -> Self {
        self.options.without_frozen = true;
        self
    }

    /// Run the bundle's `init` on the device with the seed instead of starting from the
    /// bundle's own variables. Without this, `init` runs only for a bundle that has no
    /// `variables.safetensors`.
    pub fn init_variables(mut self) -> Self {
        self.options.variables = VariablesSource::Init;
        self
    }

    /// The seed of the RNG key (`jax.random.key(seed)`) and of `init` when it runs; default:
    /// the bundle's. It does not re-run `init`: see [`Builder::init_variables`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = Some(seed);
        self
    }

    /// Start from this raw key data instead of the seed's key.
    pub fn key(mut self, key: [u32; 2]) -> Self {
        self.options.key = Some(key);
        self
    }

    /// The device index; default 0.
    pub fn device(mut self, index: usize) -> Self {
        self.options.device = index;
        self
    }

    /// The PJRT plugin `.so`; default: the search of [`crate::pjrt::Plugin::load`].
    pub fn plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.plugin = Some(path.into());
        self
    }

    /// On a CPU plugin, create the client with `n` (virtual) devices, for bundles exported
    /// for several devices; default: the plugin's (4), or `$FLAXLAYER_CPU_DEVICES`.
    pub fn cpu_devices(mut self, n: usize) -> Self {
        self.options.cpu_devices = Some(n);
        self
    }

    /// Shares an existing PJRT client.
    pub fn client(mut self, client: Client) -> Self {
        self.options.client = Some(client);
        self
    }

    /// Where compiled executables are cached. By default only in `$FLAXLAYER_CACHE` when it
    /// names a directory ([`CacheSetting::EnvOnly`]): the library writes nowhere else unless
    /// asked. `CacheSetting::FromEnv` opts in to the user's cache directory
    /// (`~/.cache/flaxlayer`), as the `flaxlayer` command line does; `CacheSetting::Dir(path)`
    /// names one; `CacheSetting::Off` never caches.
    pub fn compile_cache(mut self, setting: CacheSetting) -> Self {
        self.options.cache = setting;
        self
    }

    /// Treat the bundle as untrusted: compile each computation in a child process with a time
    /// limit, so a payload that crashes or hangs XLA's compiler is an
    /// [`Error::IsolatedCompile`](crate::Error::IsolatedCompile) here. The child is the current
    /// executable run again, whose `main` must call
    /// [`maybe_run_worker`](super::isolate::maybe_run_worker) first (see
    /// [`isolate`](super::isolate)). The executables still run in this process: see the
    /// README's trust model.
    pub fn untrusted(mut self, isolation: Isolation) -> Self {
        self.options.isolation = Some(isolation);
        self
    }

    /// The options collected so far.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Opens the bundle and builds.
    pub fn build(self) -> Result<T> {
        T::build(self.source.open()?, self.options)
    }
}

impl<T: Restore> Builder<T> {
    /// Loads the save in the builder's directory ([`FlaxLayer::save`](super::FlaxLayer::save),
    /// [`Trainer::save`](super::Trainer::save)): its variables, key and settings, with this
    /// builder's client, device and compile options. No plugin is ever named by the saved
    /// files: it comes from these options or the environment.
    pub fn load(self) -> Result<T> {
        T::restore(self.source.open()?, self.options)
    }
}

