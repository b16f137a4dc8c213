"""The `flaxlayer-export` console script: export a Flax module (linen or NNX) to a bundle.

    flaxlayer-export PY_FILE:ATTR --input inputs=1,28,28,1:float32 --out bundles/my_model
    flaxlayer-export my_package.models:MyModule --input ... --out ...

See docs/exporter.md ("CLI") for the input rules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
import traceback

import flax.linen as nn
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from .export import export_flax
from .kinds import module_kind
from .linen import DEFAULT_MAX_BATCH
from .methods import InputStructureError

_INPUT_RE = re.compile(r"^([^=]+)=([0-9,\s]*):([A-Za-z0-9_]+)$")


class CliError(Exception):
    """A user error: printed as one message, exit status 2."""


def _parse_input(s: str):
    m = _INPUT_RE.match(s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad --input {s!r}; expected NAME=D0,D1,...:DTYPE")
    name, shape, dtype = m.group(1), m.group(2), m.group(3)
    dims = tuple(int(d) for d in shape.split(",") if d.strip())
    try:
        dt = np.dtype(jnp.dtype(dtype))
    except TypeError as e:
        raise argparse.ArgumentTypeError(f"bad dtype {dtype!r}") from e
    return name, dims, dt


def make_cli_inputs(specs, seed: int = 0):
    """Random inputs for the CLI from [(name, shape, dtype)] (command-line order).

    Floats: standard normal; ints: uniform in [0, 10); bool: uniform; all from
    `numpy.random.default_rng(seed)` in the given order. Structure: a single
    input named `inputs` -> a bare array; names 0..n-1 (all of them) -> a
    tuple in index order; anything else -> a dict.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape, dt in specs:
        if name in arrays:
            raise CliError(f"input {name!r} given twice")
        if np.issubdtype(dt, np.floating) or dt == np.dtype(ml_dtypes.bfloat16):
            a = rng.standard_normal(shape).astype(np.float32).astype(dt)
        elif dt == np.bool_:
            a = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            a = rng.integers(0, 10, size=shape).astype(dt)
        else:
            raise CliError(f"unsupported input dtype {dt}")
        arrays[name] = a
    names = list(arrays)
    if names == ["inputs"]:
        return arrays["inputs"]
    if sorted(names) == [str(i) for i in range(len(names))]:
        return tuple(arrays[str(i)] for i in range(len(names)))
    return arrays


def _load_python(target: str):
    """The Python module named by TARGET's left part: a .py file, or an importable module."""
    where = target.rsplit(":", 1)[0]
    if where.endswith(".py") or os.path.sep in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise CliError(f"{where}: no such file")
        modname = "_flaxlayer_target_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise CliError(f"cannot load {where}")
        pymod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = pymod
        spec.loader.exec_module(pymod)
        return pymod
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise CliError(f"cannot import {where!r}: {e}") from e


def load_target(target: str):
    """(python module, what to export) for PY_FILE:ATTR or package.module:ATTR: a linen or NNX
    module instance, a function of `rngs` returning an NNX module (an NNX class whose other
    arguments have defaults is one), or what a zero-argument callable returns."""
    if ":" not in target:
        raise CliError("target must be PY_FILE:ATTR or MODULE:ATTR")
    pymod = _load_python(target)
    attr = target.rsplit(":", 1)[1]
    if not hasattr(pymod, attr):
        raise CliError(f"{target}: {attr!r} is not defined there")
    obj = getattr(pymod, attr)
    try:
        module_kind(obj)  # a linen or NNX module, or a factory of rngs: exported as it is
        return pymod, obj
    except TypeError:
        pass
    module = obj() if callable(obj) else None
    if not isinstance(module, (nn.Module, nnx.Module)):
        raise CliError(f"{attr} is not a Flax module (linen or NNX), a function of rngs returning "
                       "an NNX module, nor a zero-argument callable returning a module")
    return pymod, module


def parse_batch_sizes(text: str | None):
    if text is None:
        return None
    if text.strip() == "auto":
        return "auto"
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError as e:
        raise CliError(f'--batch-sizes must be "auto" or comma-separated integers, got {text!r}') from e


def parse_frozen_sizes(text: str | None):
    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError as e:
        raise CliError(f"--frozen-batch-sizes must be comma-separated integers, got {text!r}") from e


def _parser():
    p = argparse.ArgumentParser(
        prog="flaxlayer-export",
        description="Export a Flax module, linen or NNX, to a flaxlayer bundle (docs/bundle-format.md): "
                    "its init and a method, in inference and training mode, at the given batch sizes.",
        epilog="Examples: flaxlayer-export model.py:model --input inputs=1,28,28,1:float32 --out bundle "
               "(a linen module instance, or a class built with no arguments); "
               "flaxlayer-export model.py:make --input x=4,8:float32 --out bundle, where make(rngs) returns "
               "an NNX module (or ATTR is an NNX class taking only rngs). Python API: flaxlayer_export.export_flax.")
    p.add_argument("target", help="PY_FILE:ATTR or MODULE:ATTR: a linen or NNX Module instance, a linen "
                                  "Module class or zero-argument callable returning a module, or a function "
                                  "of rngs returning an NNX module (an NNX class taking rngs)")
    p.add_argument("--input", action="append", type=_parse_input, required=True, metavar="NAME=SHAPE:DTYPE",
                   help="a sample input, e.g. inputs=1,28,28,1:float32 (repeatable)")
    p.add_argument("--init-input", action="append", type=_parse_input, default=None, metavar="NAME=SHAPE:DTYPE",
                   help="inputs for init when they differ from --input (same structure rules)")
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--method", default=None,
                   help="a method name of the module, or a function name in PY_FILE taking (module, inputs[, training])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rng-streams", default=None,
                   help="comma-separated RNG streams fed by the layer key (default: dropout for a linen "
                        "module, every nnx.Rngs stream of an NNX module; empty for none)")
    p.add_argument("--batch-sizes", default=None,
                   help='comma-separated, e.g. 1,8, or "auto": powers of two up to --max-batch '
                        "(default: the sample batch)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"largest power of two for --batch-sizes auto (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--platforms", default="cpu", help="comma-separated, e.g. cpu,cuda")
    p.add_argument("--frozen", action="store_true",
                   help="also export inference with the params compiled in as constants (faster "
                        "calls while the layer's params are the bundle's; docs/exporter.md)")
    p.add_argument("--no-hoist", action="store_true",
                   help="do not split inference into a params-only prologue and a per-call body "
                        "(docs/exporter.md, hoist)")
    p.add_argument("--frozen-batch-sizes", default=None, metavar="B,B,...",
                   help="with --frozen: only these exported batch sizes get a frozen inference "
                        "(default: all; each frozen one holds the params once more)")
    p.add_argument("--no-batching-check", action="store_true",
                   help="skip the padding check (the method is marked not paddable: the runtime "
                        "serves only the exported batch sizes)")
    p.add_argument("--traceback", action="store_true", help="on an error, print the Python traceback")
    return p


def run(args) -> int:
    pymod, module = load_target(args.target)
    method = args.method
    owner = module if isinstance(module, type) else type(module)
    if method is not None and not hasattr(owner, method):
        fn = getattr(pymod, method, None)
        # a function factory's module is only known once built: let the exporter look
        built_later = not isinstance(module, (type, nn.Module, nnx.Module))
        if callable(fn):
            method = fn
        elif not built_later:
            raise CliError(f"--method {method!r} is neither a method of the module nor a function in the file")
    inputs = make_cli_inputs(args.input)
    init_inputs = make_cli_inputs(args.init_input) if args.init_input else None
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    try:
        manifest = export_flax(
            module, inputs, args.out, method=method, seed=args.seed,
            rng_streams=None if args.rng_streams is None else tuple(split(args.rng_streams)),
            init_inputs=init_inputs,
            platforms=tuple(split(args.platforms)),
            batch_sizes=parse_batch_sizes(args.batch_sizes), max_batch=args.max_batch,
            frozen=args.frozen, frozen_batch_sizes=parse_frozen_sizes(args.frozen_batch_sizes),
            batching=not args.no_batching_check, hoist=not args.no_hoist)
    except InputStructureError as e:
        names = [name for name, _, _ in args.input]
        if isinstance(inputs, dict):
            made = f"a dict with keys {sorted(inputs)}"
        elif isinstance(inputs, tuple):
            made = f"a tuple of {len(inputs)} arrays"
        else:
            made = "a bare array"
        hint = ""
        if isinstance(inputs, dict) and len(args.input) == 1:
            name, shape, dt = args.input[0]
            hint = (f"\nTo pass one array, write --input inputs={','.join(map(str, shape))}:{dt.name} "
                    f"(instead of {name}=...).")
        raise CliError(
            f"{e}\nThe --input names {names} make {made}: one --input named `inputs` gives a bare "
            "array, names 0..n-1 a tuple, other names a dict with those keys (see docs/exporter.md)."
            + hint) from e
    m = manifest["methods"][manifest["default_method"]]
    print(f"wrote {args.out}: {manifest['module']}.{manifest['default_method']} "
          f"batch sizes {[e['batch_size'] for e in m['inference']]}, "
          f"{len(manifest['variables'])} variables, "
          f"paddable: {m['batching']['paddable']}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (CliError, ValueError) as e:
        if args.traceback:
            traceback.print_exc()
        print(f"flaxlayer-export: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
