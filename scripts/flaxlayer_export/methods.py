"""Which method to export and how it is called (Keras FlaxLayer conventions).

The exporter calls `module.apply(variables, inputs, method=method[, training=...])`: the
method gets ONE positional input (an array or a PyTree of arrays), plus `training` when its
signature has a parameter of that name.
"""

from __future__ import annotations

import inspect
import re

import flax.linen as nn

from .names import describe


class InputStructureError(ValueError):
    """The sample inputs do not fit the method's input parameter (wrong name, structure)."""


def resolve_method(module: nn.Module, method):
    """The callable whose signature decides `takes_training`."""
    if method is None:
        return type(module).__call__
    if isinstance(method, str):
        fn = getattr(type(module), method, None)
        if fn is None or not callable(fn):
            raise ValueError(f"{type(module).__name__} has no method {method!r}")
        return fn
    if callable(method):
        return method
    raise TypeError(f"method must be None, a str or a callable, got {method!r}")


def takes_training(module: nn.Module, method) -> bool:
    """Keras FlaxLayer passes `training` only if the method has such a parameter."""
    sig = inspect.signature(resolve_method(module, method))
    return "training" in sig.parameters


def method_name_of(method) -> str:
    if method is None:
        return "__call__"
    if isinstance(method, str):
        return method
    return getattr(method, "__name__", "method")


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def method_title(module: nn.Module, method) -> str:
    """`MyModule.__call__(inputs, training)` for messages."""
    fn = resolve_method(module, method)
    params = list(inspect.signature(fn).parameters)[1:]
    owner = f"{type(module).__name__}." if method is None or isinstance(method, str) else ""
    return f"{owner}{method_name_of(method)}({', '.join(params)})"


def input_parameters(module: nn.Module, method) -> list[str]:
    """The method's parameters after `self` (or after `module` for a function method)."""
    return list(inspect.signature(resolve_method(module, method)).parameters)[1:]


def check_signature(module: nn.Module, method) -> None:
    """The method must take exactly one positional input besides `training`."""
    sig = inspect.signature(resolve_method(module, method))
    params = list(sig.parameters.values())[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name != "training"]
    required = [p.name for p in positional if p.default is p.empty]
    kw_required = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty
                   and p.name != "training"]
    title = method_title(module, method)
    hint = ("the exporter passes the method ONE input argument (an array or a PyTree of arrays) "
            "and `training` when it has such a parameter; wrap it in a function "
            "fn(module, inputs[, training]) that unpacks the inputs (as Keras FlaxLayer's "
            "my_flax_module_wrapper does) and pass that function as method")
    if not positional:
        raise InputStructureError(f"{title} takes no input parameter; {hint}")
    if len(required) > 1 or kw_required:
        names = required + kw_required
        raise InputStructureError(f"{title} needs {len(names)} arguments ({', '.join(names)}); {hint}")


def input_error(module: nn.Module, method, inputs, exc: BaseException, *, what: str) -> InputStructureError:
    """An InputStructureError for `exc`, raised while tracing the method on `inputs`."""
    params = [p for p in input_parameters(module, method) if p != "training"]
    first = params[0] if params else "inputs"
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else ""
    return InputStructureError(
        f"{what} failed on the sample inputs {describe(inputs)}: {type(exc).__name__}: {detail}\n"
        f"{method_title(module, method)} receives the inputs as its one input parameter "
        f"`{first}`; does it expect this structure?")
