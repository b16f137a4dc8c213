//! The generators of a repository's generation bundles (docs/generation.md): one
//! [`Generator`] per model version whose bundle has a `generation` section, with its own layer
//! and cache on the device. The generate routes (`generate.rs`) run requests on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::repository::Repository;
use crate::generate::Generator;
use crate::pjrt::Client;
use crate::{FlaxLayer, Result};

/// The generators of the repository's generation bundles, by model name and version.
#[derive(Default)]
pub struct Generators {
    pub(super) by_model: HashMap<(String, u64), Arc<Mutex<Generator>>>,
}

impl Generators {
    /// A generator for every model version whose bundle has a `generation` section.
    pub fn load(repo: &Repository, client: &Client) -> Result<Generators> {
        let mut by_model = HashMap::new();
        for (name, versions) in repo.models() {
            for m in versions {
                let bundle = m.layer().bundle().clone();
                if bundle.manifest().generation.is_none() {
                    continue;
                }
                let layer = FlaxLayer::builder(bundle).client(client.clone()).build()?;
                by_model.insert((name.to_string(), m.version()), Arc::new(Mutex::new(Generator::from_layer(layer)?)));
            }
        }
        Ok(Generators { by_model })
    }
}
