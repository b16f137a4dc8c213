//! The model repository: `DIR/MODEL/VERSION/` bundle directories (versions are positive
//! integers; the highest serves requests that name none), with an optional
//! `DIR/MODEL/config.json` per model.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::config::{ModelConfig, ServerConfig, MODEL_CONFIG_FILE};
use super::error::ApiError;
use super::metrics::Metrics;
use super::model::Model;
use crate::pjrt::Client;
use crate::{Error, Result};

/// Every model version the server serves, by name and version.
#[derive(Debug, Default)]
pub struct Repository {
    models: BTreeMap<String, BTreeMap<u64, Arc<Model>>>,
}

impl Repository {
    /// Loads every model under `dir`. A model directory must hold at least one version
    /// directory with a bundle; entries that are not directories, or whose names are not
    /// positive integers, are skipped (`config.json`, notes, ...). Any bundle that fails to
    /// load fails the whole repository, naming it.
    pub(crate) fn load(server: &ServerConfig, client: &Client, metrics: &Arc<Metrics>) -> Result<Repository> {
        let dir = server.models.as_path();
        let mut models = BTreeMap::new();
        for (name, model_dir) in subdirs(dir)? {
            let config = ModelConfig::load(&model_dir)?;
            let mut versions = BTreeMap::new();
            for (entry, version_dir) in subdirs(&model_dir)? {
                let Some(version) = entry.parse::<u64>().ok().filter(|&v| v > 0 && entry == v.to_string()) else { continue };
                let model = Model::load(&name, version, &version_dir, &config, server, client, metrics.clone())
                    .map_err(|e| Error::invalid(format!("model {name:?} version {version} ({})", version_dir.display()), e.to_string()))?;
                versions.insert(version, Arc::new(model));
            }
            if versions.is_empty() {
                return Err(Error::invalid(
                    format!("model {name:?} ({})", model_dir.display()),
                    format!("no version directory: expected {name}/1/manifest.json (versions are positive integers; {MODEL_CONFIG_FILE} is optional)"),
                ));
            }
            models.insert(name, versions);
        }
        if models.is_empty() {
            return Err(Error::invalid(dir.display().to_string(), "the model repository holds no model directory (expected DIR/MODEL/VERSION/manifest.json)"));
        }
        Ok(Repository { models })
    }

    /// The model versions, by name, each sorted by version.
    pub fn models(&self) -> impl Iterator<Item = (&str, Vec<&Arc<Model>>)> {
        self.models.iter().map(|(n, v)| (n.as_str(), v.values().collect()))
    }

    /// The versions of `name`, highest last.
    pub fn versions(&self, name: &str) -> Result<Vec<u64>, ApiError> {
        Ok(self.model_versions(name)?.keys().copied().collect())
    }

    fn model_versions(&self, name: &str) -> Result<&BTreeMap<u64, Arc<Model>>, ApiError> {
        self.models.get(name).ok_or_else(|| ApiError::ModelNotFound { name: name.to_string(), available: self.models.keys().cloned().collect::<Vec<_>>().join(", ") })
    }

    /// The model version asked for: `version` as given in a URL, or the highest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, ApiError> {
        let versions = self.model_versions(name)?;
        let not_found = || ApiError::VersionNotFound {
            model: name.to_string(),
            version: version.unwrap_or_default().to_string(),
            available: versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", "),
        };
        match version {
            None | Some("") => versions.values().next_back().ok_or_else(not_found),
            Some(v) => v.parse::<u64>().ok().and_then(|v| versions.get(&v)).ok_or_else(not_found),
        }
    }
}

/// The subdirectories of `dir` with their names, sorted; hidden ones are skipped.
fn subdirs(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}
