"""export_flax: a Flax module's init and method, in inference and training mode, as a bundle
directory (docs/bundle-format.md, docs/exporter.md). Linen modules go to `linen.py`, NNX
modules to `nnx_export.py`; both produce the same kind of bundle."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .bundle_dir import write_bundle
from .kinds import LINEN, module_kind
from .linen import DEFAULT_MAX_BATCH, BuiltBundle, allowing_custom_calls, linen_export
from .nnx_export import nnx_export
from .sharding import mesh_request

NNX_ON_MESH = (
    "exporting an NNX module on a mesh (mesh=...) is not supported yet: the mesh export reads "
    "linen's partitioning metadata and runs its golden data through module.apply. Export the "
    "NNX module without a mesh, or wrap it for linen (nnx.bridge.to_linen) and export that "
    "on the mesh")


def export_flax(
    module,
    sample_inputs,
    out_dir: str,
    *,
    method=None,
    variables=None,
    seed: int = 0,
    rng_streams: Sequence[str] | None = None,
    init_inputs=None,
    platforms: Sequence[str] = ("cpu",),
    batch_sizes: Sequence[int] | str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    extra_golden: dict[str, Any] | Callable[[dict], dict] | None = None,
    mesh=None,
    param_sharding=None,
    state_sharding=None,
    input_sharding=None,
    output_sharding=None,
    logical_rules=None,
    frozen: bool = False,
    frozen_batch_sizes: Sequence[int] | None = None,
    batching: bool = True,
    allow_custom_calls: Sequence[str] = (),
    bundle_variables: bool = True,
    hoist: bool = True,
) -> dict:
    """Export `module` to a bundle directory `out_dir`; returns the manifest.

    Args:
      module: a flax.linen.Module instance; or a flax.nnx.Module instance (its current state
        is bundled, the bundle has no init); or a function `make(rngs)` returning an
        nnx.Module (the module is `make(rngs=nnx.Rngs(jax.random.key(seed)))` and the
        bundle's init builds it again from the layer's seed).
      sample_inputs: an array or PyTree of arrays (tuple/list/dict) with a common leading
        batch dimension; the exported shapes and the golden data use them. int64/float64
        leaves become int32/float32, as under jax.jit.
      method: None (`__call__`), a method name, or a function
        `fn(module, inputs[, training])` (Keras FlaxLayer conventions).
      variables: variables to bundle instead of `module.init` under `seed` (linen), or an
        nnx.State to `nnx.update` the module with (NNX) (manifest `variables_origin`:
        "given").
      seed: `K0 = jax.random.key(seed)` (threefry) for init and the layer key.
      rng_streams: linen: the RNG streams fed by the layer key (besides "params" at init),
        default ("dropout",). NNX: the module's nnx.Rngs streams reseeded from the layer key
        on every training call, default all of them; () leaves them to advance through the
        module's own RNG state.
      init_inputs: inputs for `init` when they differ from `sample_inputs`. When the exported
        init reads them (data-dependent init), they are bundled as init_inputs.safetensors.
      platforms: lowering platforms; more than one adds JAX's platform-index argument to
        every computation.
      batch_sizes: one inference/training computation per batch size (leading dim of every
        input replaced): a list that includes the sample batch, "auto" (powers of two up to
        `max_batch`, plus the sample batch), or None (the sample batch only).
      max_batch: the largest power of two for batch_sizes="auto".
      extra_golden: extra tensors for golden.safetensors (e.g. decoder `greedy/...`), a dict
        or a function of the bundled variables returning one; names must not clash with the
        standard ones.
      mesh: a jax.sharding.Mesh (linen modules): every computation runs on its devices,
        split as `param_sharding`, `state_sharding`, `input_sharding`, `output_sharding` say
        (PartitionSpecs; Flax's partitioning metadata with `logical_rules` for the variables
        when not given; replicated otherwise). See flaxlayer_export.sharding. An NNX module
        on a mesh is a NotImplementedError.
      frozen: also export each inference computation with the bundled params compiled in as
        constants (manifest `frozen` entries). The runtime runs those while the layer's params
        are the bundle's, and the ones with params as arguments once they change. Calls pass
        PJRT fewer arguments (each costs the CPU plugin ~2k instructions per call); the
        bundle holds the params once more per frozen batch size. Single device only.
      frozen_batch_sizes: with frozen=True, the batch sizes that get a frozen inference
        (each one of `batch_sizes`); default: all of them. The others run with params as
        arguments. A BERT-base bundle at batch sizes 1 and 16 with frozen_batch_sizes=[1]
        holds one 438 MB frozen copy instead of two.
      batching: run the padding check (inference in JAX on the sample padded to a larger
        batch; see flaxlayer_export.batching). False skips it: the method is marked not
        paddable ("the padding check was skipped"), and the runtime serves only the exported
        batch sizes. For models whose check is slow or whose outputs are known to mix rows.
        A method whose outputs cannot be compared row by row (a [B, B] output such as CLIP's
        logits_per_image, a batch axis that is not leading) is marked not paddable, with the
        reason, without this.
      bundle_variables: False leaves variables.safetensors out (manifest `variables_origin`:
        "init-only"): layers then start from the bundle's init under their seed. Only for
        variables init builds again (no `variables=`, not an NNX instance, not frozen). A
        bundle that ships its variables never falls back to init: the runtime refuses it when
        the file is missing or wrong.
      allow_custom_calls: custom-call targets that jax.export may export although they are not
        on JAX's compatibility list (`jax.export.DisabledSafetyCheck.custom_call`; e.g. your
        own FFI targets, which the runtime must then provide).
      hoist: also export each inference computation split into a params-only prologue and a
        per-call body (manifest `hoisted` entries; docs/performance.md): work that depends
        only on the params (`kernel.T`, casts, dequantisation) runs once per param write
        instead of on every call. Only when there is such work; single device only. The
        split is checked against the inference on the sample inputs.

    A method may return arrays in tuples, lists and dicts, or a dataclass-like PyTree with
    named fields (flax.struct.dataclass, e.g. a Hugging Face ModelOutput; namedtuples;
    jax.tree_util.register_dataclass types): its fields are exported as a dict by field name
    (None fields dropped). Other custom PyTree nodes are refused (flaxlayer_export.outputs).
    """
    built = build_flax_bundle(
        module, sample_inputs, method=method, variables=variables, seed=seed,
        rng_streams=rng_streams, init_inputs=init_inputs, platforms=platforms,
        batch_sizes=batch_sizes, max_batch=max_batch, extra_golden=extra_golden,
        sharding=mesh_request(mesh, param_sharding=param_sharding, state_sharding=state_sharding,
                              input_sharding=input_sharding, output_sharding=output_sharding,
                              logical_rules=logical_rules),
        frozen=frozen, frozen_batch_sizes=frozen_batch_sizes, batching=batching,
        allow_custom_calls=allow_custom_calls,
        bundle_variables=bundle_variables, hoist=hoist)
    write_bundle(out_dir, built.files)
    return built.manifest


def exporter(module, sample_inputs, *, sharding=None, **kwargs):
    """The export of `module` (linen or NNX), ready to `build`; its `fns` are the functions
    it exports (export_train_step builds its steps on them). `sharding`: a
    sharding.MeshRequest (`mesh_request`) for a mesh export, linen only."""
    if module_kind(module) == LINEN:
        return linen_export(module, sample_inputs, sharding=sharding, **kwargs)
    if sharding is not None:
        raise NotImplementedError(NNX_ON_MESH)
    return nnx_export(module, sample_inputs, **kwargs)


def build_flax_bundle(module, sample_inputs, *, extra_golden=None, allow_custom_calls=(),
                      **kwargs) -> BuiltBundle:
    """Everything export_flax writes, in memory (keyword arguments as for `exporter`)."""
    with allowing_custom_calls(allow_custom_calls):
        return exporter(module, sample_inputs, **kwargs).build(extra_golden)
