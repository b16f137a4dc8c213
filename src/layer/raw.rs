//! `RawLoop`: a bundle computation driven straight through the PJRT wrappers, without the
//! layer (no PyTree, no checks, no host tensors): upload the inputs, execute, copy the
//! outputs into host memory allocated once. It is the floor that benchmarks hold the layer
//! against.

use crate::bundle::{Bundle, Role};
use crate::layer::seed_key;
use crate::pjrt::{Buffer, Client, CompileOptions, Device, LoadedExecutable, Program};
use crate::{Error, Result, Tensor};

/// One computation of a bundle with its arguments resident on the device.
pub struct RawLoop {
    client: Client,
    device: Device,
    exe: LoadedExecutable,
    /// The module's arguments in order: resident buffers, or an input by index.
    args: Vec<RawArg>,
    /// Host copies of the inputs.
    inputs: Vec<Tensor>,
    /// For each result: the kept-argument position it replaces (state, key), if any.
    feeds_back: Vec<Option<usize>>,
    /// Host memory for every result, allocated once.
    host: Vec<Vec<u8>>,
}

enum RawArg {
    Resident(Buffer),
    Input(usize),
}

impl RawLoop {
    /// Compiles `file` of `bundle` on `client`'s first device, with the bundle's variables,
    /// the key of `seed` and `inputs` (one tensor per input leaf, in flat order).
    pub fn new(client: &Client, bundle: &Bundle, file: &str, seed: u64, inputs: Vec<Tensor>) -> Result<RawLoop> {
        let comp = bundle.computation(file)?;
        let (spec, exp) = (&comp.spec, &comp.exported);
        if exp.nr_devices > 1 {
            return Err(Error::invalid(file, format!("exported for {} devices; the raw loop runs single-device computations only", exp.nr_devices)));
        }
        let device = client.device(0)?;
        crate::custom_calls::register(client)?;
        let exe = client.compile(Program::Mlir(&exp.mlir_module), &CompileOptions::default())?.with_input_signature(exp.input_signature()?);
        let vars = bundle.variables()?.ok_or_else(|| Error::invalid(file, "the bundle has no variables.safetensors"))?;
        let mut input_index = 0;
        let mut all: Vec<Option<Buffer>> = Vec::with_capacity(spec.args.len());
        let mut input_slots: Vec<Option<usize>> = Vec::with_capacity(spec.args.len());
        for slot in &spec.args {
            input_slots.push((slot.role == Role::Input).then_some(input_index));
            all.push(match slot.role {
                Role::Input => {
                    input_index += 1;
                    None
                }
                Role::Key => Some(client.buffer_from_slice(&seed_key(seed), &[2], &device)?),
                _ => {
                    let name = slot.name.as_deref().unwrap_or_default();
                    let t = vars.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| Error::NotFound {
                        what: "variable",
                        name: name.into(),
                        available: String::new(),
                    })?;
                    Some(client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), &device)?)
                }
            });
        }
        if input_index != inputs.len() {
            return Err(Error::ArgumentCount { what: "raw loop inputs".into(), expected: input_index, got: inputs.len() });
        }
        let mut args = Vec::new();
        let placement = super::placement::Placement::new(client.clone(), 0, 1, "the raw loop")?;
        if let Some(index) = super::computation::platform_index_arg(&placement, exp, file, 1)? {
            args.push(RawArg::Resident(index.into_single()?));
        }
        for &i in &exp.module_kept_var_idx {
            args.push(match input_slots[i] {
                Some(k) => RawArg::Input(k),
                None => RawArg::Resident(all[i].take().ok_or_else(|| Error::invalid(file, "argument kept twice"))?),
            });
        }
        let offset = usize::from(exp.has_platform_index_arg());
        let kept_position = |name: &Option<String>, role: Role| {
            exp.module_kept_var_idx
                .iter()
                .position(|&i| spec.args[i].role == role && &spec.args[i].name == name)
                .map(|p| p + offset)
        };
        let feeds_back = spec
            .results
            .iter()
            .map(|r| match r.role {
                Role::State | Role::Key => kept_position(&r.name, r.role),
                _ => None,
            })
            .collect();
        let host = exp.out_avals.iter().map(|a| Ok(Tensor::zeros(a.dtype, a.shape.clone())?.as_bytes().to_vec())).collect::<Result<_>>()?;
        Ok(RawLoop { client: client.clone(), device, exe, args, inputs, feeds_back, host })
    }

    /// One call: inputs up, execute (state and key donated and replaced, as the layer does),
    /// the outputs down into the preallocated host memory.
    pub fn step(&mut self) -> Result<()> {
        let uploaded = self
            .inputs
            .iter()
            .map(|t| self.client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), &self.device))
            .collect::<Result<Vec<_>>>()?;
        let mut donate = vec![false; self.args.len()];
        for &p in self.feeds_back.iter().flatten() {
            donate[p] = true;
        }
        let refs: Vec<&Buffer> = self
            .args
            .iter()
            .map(|a| match a {
                RawArg::Resident(b) => b,
                RawArg::Input(i) => &uploaded[*i],
            })
            .collect();
        let outs = self.exe.execute(&refs, &donate)?;
        for ((out, host), back) in outs.into_iter().zip(&mut self.host).zip(&self.feeds_back) {
            match back {
                Some(p) => self.args[*p] = RawArg::Resident(out),
                None => out.copy_to_host_bytes(host)?,
            }
        }
        Ok(())
    }

    /// The outputs of the last step as raw bytes, one entry per result (state and key
    /// entries, which stay on the device, are left as zeros).
    pub fn host_results(&self) -> &[Vec<u8>] {
        &self.host
    }
}

/// Zeros of every input aval of `file`, in flat order (a convenience for benchmarks).
pub fn zero_inputs(bundle: &Bundle, file: &str) -> Result<Vec<Tensor>> {
    let comp = bundle.computation(file)?;
    comp.spec
        .args
        .iter()
        .zip(&comp.exported.in_avals)
        .filter(|(s, _)| s.role == Role::Input)
        .map(|(_, a)| Tensor::zeros(a.dtype, a.shape.to_vec()))
        .collect()
}
