"""Which kind of Flax module the exporter was given: a linen module, an NNX module instance,
or a function building an NNX module from `rngs`."""

from __future__ import annotations

import inspect

import flax.linen as nn
from flax import nnx

LINEN, NNX, NNX_FACTORY = "linen", "nnx", "nnx_factory"

ACCEPTED = ("the exporter takes a flax.linen.Module instance, a flax.nnx.Module instance, or a "
            "function make(rngs) returning an nnx.Module, such as an nnx.Module class whose other "
            "constructor arguments have defaults (the bundle's init then builds the module as "
            "make(rngs=nnx.Rngs(key)))")


def module_kind(module) -> str:
    """LINEN, NNX or NNX_FACTORY; anything else is a TypeError saying what is accepted."""
    if isinstance(module, nn.Module):
        return LINEN
    if isinstance(module, nnx.Module):
        return NNX
    if isinstance(module, type) and issubclass(module, nnx.Module) and _needs_only_rngs(module):
        return NNX_FACTORY  # the class builds the module from rngs alone
    if isinstance(module, type) and issubclass(module, (nn.Module, nnx.Module)):
        name = module.__name__
        example = (f"{name}(...)" if issubclass(module, nn.Module)
                   else f"{name}(..., rngs=nnx.Rngs(0)), or lambda rngs: {name}(..., rngs=rngs)")
        raise TypeError(f"{ACCEPTED}; got the class {name} itself: pass an instance, e.g. {example}")
    if callable(module) and _takes_rngs(module):
        return NNX_FACTORY
    raise TypeError(
        f"{ACCEPTED}; got {type(module).__module__}.{type(module).__qualname__}. An NNX module "
        "inside a linen model is exported with the linen model (nnx.bridge.to_linen wraps it), "
        "a linen module inside an NNX model with the NNX model (nnx.bridge.ToNNX wraps it)")


def _needs_only_rngs(cls) -> bool:
    """The constructor takes `rngs` and every other parameter has a default."""
    try:  # __init__'s: NNX's metaclass hides the class's own signature
        params = dict(list(inspect.signature(cls.__init__).parameters.items())[1:])
    except (TypeError, ValueError):
        return False
    return "rngs" in params and all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for n, p in params.items() if n != "rngs")


def _takes_rngs(fn) -> bool:
    try:
        return "rngs" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
