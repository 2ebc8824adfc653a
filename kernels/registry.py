"""The registry of backends: registration by name or entry point, `module:function` specs, the default backend as a
context variable, and `attend`, the one call every backend is reached by (the contract: contract.py)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import importlib.metadata
import re
from collections.abc import Callable, Iterator

import torch

from .contract import AttendFn, Backend, always_supported
from .errors import UnknownBackendError

ENTRY_POINT_GROUP = "attnbench.backends"


DEFAULT_BACKEND = "sdpa"


_REGISTRY: dict[str, Backend] = {}


_entry_points_loaded = False


_default_backend: contextvars.ContextVar[str] = contextvars.ContextVar("attnbench_backend", default=DEFAULT_BACKEND)


def register_backend(
    name: str,
    fn: AttendFn,
    description: str,
    unsupported_reason: Callable[[torch.device, torch.dtype], str | None] = always_supported,
    *,
    replace: bool = False,
    **declared,
) -> Backend:
    """Register `fn` under `name`; returns the Backend. `declared`: any other field of Backend (features,
    no_dropout_reason, nan_departure, ...), by name. Re-registering a name needs replace=True."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"backend {name!r} is already registered ({_REGISTRY[name].description})")
    backend = Backend(name, fn, description, unsupported_reason, **declared)
    _REGISTRY[name] = backend
    return backend


def _as_backend(name: str, obj: object) -> Backend:
    if isinstance(obj, Backend):
        return obj
    if callable(obj):
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        deviation = getattr(obj, "nan_departure", None)  # a plain callable may declare it as an attribute
        return Backend(name, obj, doc[0] if doc else f"plug-in backend {name}", nan_departure=deviation)
    raise TypeError(f"{name!r} must be a attnbench.Backend or an attention callable, got {type(obj).__name__}")


def load_entry_point_backends() -> None:
    """Register backends that installed packages declare in the `attnbench.backends` entry-point group.

    Each entry point names either a `attnbench.Backend` or a plain attention callable (its name is the
    entry point's name, its description the first line of its docstring).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            try:
                obj = ep.load()
            except Exception as e:
                raise RuntimeError(
                    f"entry point {ep.name} = {ep.value!r} ({ENTRY_POINT_GROUP}) failed to load: {e}"
                ) from e
            _REGISTRY[ep.name] = dataclasses.replace(_as_backend(ep.name, obj), name=ep.name)


_SPEC_FORM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


_SPECS: dict[str, Backend] = {}  # spec -> its Backend: the same spec gives the same object every time


def load_backend_spec(spec: str) -> Backend:
    """Import 'package.module:attr' and return it as a Backend named by the spec (loaded once per spec).

    A Backend object takes the spec as its name too, so that every report row of it (benchmarks, correctness)
    carries the one name the user gave, and runs of the same spec compare."""
    if spec not in _SPECS:
        if not _SPEC_FORM.fullmatch(spec):
            raise UnknownBackendError(f"malformed backend spec {spec!r}: expected 'package.module:function'")
        module_name, _, attr = spec.partition(":")
        try:
            backend = _as_backend(spec, getattr(importlib.import_module(module_name), attr))
            _SPECS[spec] = dataclasses.replace(backend, name=spec)
        except (Exception, SystemExit) as e:  # missing module or name, a module that fails or exits on import
            raise UnknownBackendError(f"cannot load backend {spec!r}: {type(e).__name__}: {e}") from e
    return _SPECS[spec]


def get_backend(name: str | None = None) -> Backend:
    """The backend registered as `name` (default: the one chosen by `use_backend`, else 'sdpa').

    A name of the form 'package.module:function' is imported and wrapped on the fly.
    """
    name = _default_backend.get() if name is None else name
    load_entry_point_backends()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return load_backend_spec(name)
    raise UnknownBackendError(
        f"unknown attention backend {name!r}; known backends: {', '.join(backend_names())} "
        "(or give 'package.module:function')"
    )


def backend_names() -> list[str]:
    load_entry_point_backends()
    return list(_REGISTRY)


def all_backends() -> list[Backend]:
    load_entry_point_backends()
    return list(_REGISTRY.values())


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Within this block, `attend(...)` without an explicit backend uses `name`."""
    backend = get_backend(name)
    token = _default_backend.set(backend.name if backend.name in _REGISTRY else name)
    try:
        yield backend
    finally:
        _default_backend.reset(token)


def attend(q, k, v, /, *, backend: str | None = None, **keywords) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention with the named backend (or the one chosen by `use_backend`, default 'sdpa'); `keywords` are the
    contract's (call.AttentionCall: causal=True, dropout_p, scale, window, mask_mod, document_ids, softcap, score_mod,
    alibi_slopes, sinks, return_lse, descale)."""
    return get_backend(backend)(q, k, v, **keywords)
