//! `Mode`: which of a method's computations a call runs.

/// Which computation a call runs: Keras' `training` argument, as a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Inference: running averages, no dropout, no key. The default.
    #[default]
    Inference,
    /// Training: batch statistics updated, dropout drawn from the layer's key, which advances.
    Training,
}

impl Mode {
    /// `Training` when `training` is true, else `Inference`.
    pub fn from_training(training: bool) -> Mode {
        if training {
            Mode::Training
        } else {
            Mode::Inference
        }
    }

    /// Whether this is [`Mode::Training`].
    pub fn is_training(self) -> bool {
        self == Mode::Training
    }

    /// `inference` or `training`, as the manifest and the CLI name the modes.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Inference => "inference",
            Mode::Training => "training",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
