//! Client create options (`PJRT_NamedValue` lists), which each plugin defines. The CPU
//! plugins take `asynchronous` (bool) and `cpu_device_count` (int64).

use super::ffi;

/// A value of a named option.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    /// A boolean (`asynchronous`).
    Bool(bool),
    /// A 64-bit integer (`cpu_device_count`, `process_id`).
    Int64(i64),
    /// A float.
    Float(f32),
    /// A string.
    Str(String),
    /// A list of 64-bit integers.
    Int64List(Vec<i64>),
}

/// Options for [`Client::with_options`](super::Client::with_options).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientOptions {
    /// The options, by name, in order.
    pub options: Vec<(String, OptionValue)>,
}

impl ClientOptions {
    /// Adds an option.
    pub fn set(mut self, name: impl Into<String>, value: OptionValue) -> Self {
        self.options.push((name.into(), value));
        self
    }

    /// The low-latency CPU setting: run each execution on the calling thread
    /// (`asynchronous = false`) instead of handing it to a worker thread and waiting.
    pub fn cpu_synchronous() -> Self {
        ClientOptions::default().set("asynchronous", OptionValue::Bool(false))
    }

    /// The C array; it borrows names and values from `self`, which must outlive its use.
    pub(crate) fn to_named_values(&self) -> Vec<ffi::PJRT_NamedValue> {
        self.options
            .iter()
            .map(|(name, value)| {
                let mut v = ffi::PJRT_NamedValue::new();
                v.name = name.as_ptr().cast();
                v.name_size = name.len();
                v.value_size = 1;
                match value {
                    OptionValue::Bool(b) => {
                        v.type_ = ffi::PJRT_NamedValue_kBool;
                        v.value.bool_value = *b;
                    }
                    OptionValue::Int64(i) => {
                        v.type_ = ffi::PJRT_NamedValue_kInt64;
                        v.value.int64_value = *i;
                    }
                    OptionValue::Float(f) => {
                        v.type_ = ffi::PJRT_NamedValue_kFloat;
                        v.value.float_value = *f;
                    }
                    OptionValue::Str(s) => {
                        v.type_ = ffi::PJRT_NamedValue_kString;
                        v.value.string_value = s.as_ptr().cast();
                        v.value_size = s.len();
                    }
                    OptionValue::Int64List(l) => {
                        v.type_ = ffi::PJRT_NamedValue_kInt64List;
                        v.value.int64_array_value = l.as_ptr();
                        v.value_size = l.len();
                    }
                }
                v
            })
            .collect()
    }
}
