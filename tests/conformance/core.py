"""What a conformance property is, the registry of them (PROPERTIES) and the helpers property modules share.

properties.py registers the core properties, then imports metamorphic.py and contract.py, which register
theirs; a module of further properties does the same with `register` (its names must be new).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from attnbench import Backend
from hypothesis import strategies as st

from .reference import RuleResult, abs_logit_bound, grad_magnitudes, rounding_noise
from .strategies import Case, boundary_cases, long_rows_enabled


def boundary_examples(dtype: torch.dtype) -> list[Case]:
    """The boundary cases (strategies.boundary_cases) of the current profile: the default fixed examples."""
    return boundary_cases(dtype, long=long_rows_enabled())


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[Backend, object, str], RuleResult | None]
    strategy: Callable[[list[torch.dtype]], st.SearchStrategy]  # dtypes -> cases
    doc: str
    dtypes: tuple[torch.dtype, ...] | None = None  # restrict the dtypes drawn (None: all the backend supports)
    level: str = "op"  # "op" or "model" (model-level properties run the GPT in float32)
    uses_dropout: bool = False  # skipped, with the backend's reason, where it cannot apply dropout
    needs_backward: bool = False  # skipped, with the backend's reason, where it has no backward
    # The fixed kernel-size examples run in every profile (dtype -> cases): tile boundaries are always hit.
    examples: Callable[[torch.dtype], list] = boundary_examples
    features: tuple[str, ...] = ()  # contract features it needs; skipped, with the reason, where one is missing
    # (backend, device) -> why the property does not apply there (e.g. nothing declared to hold it to), or None
    applies: Callable[[Backend, str], str | None] | None = None


PROPERTIES: dict[str, Property] = {}  # name -> property, in registration order (the kill table's columns)


def register(*props: Property) -> None:
    """Add properties defined in other modules to PROPERTIES (their names must be new)."""
    for prop in props:
        if prop.name in PROPERTIES:
            raise ValueError(f"property {prop.name!r} is already registered")
        PROPERTIES[prop.name] = prop


_judged: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("judged_backend", default=None)


@contextlib.contextmanager
def judging(backend: Backend) -> Iterator[None]:
    """Judge by what `backend` declares while a property runs on it (its Backend.precision_departure)."""
    token = _judged.set(backend)
    try:
        yield
    finally:
        _judged.reset(token)


def rule_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype whose rounding the pass rule allows for inputs of `dtype` (its naive formula and atol): `dtype`
    itself, or the lower one the backend being judged declares computing it in (Backend.precision_departure)."""
    backend = _judged.get()
    departure = getattr(backend, "precision_departure", None)
    return dtype if departure is None else departure.dtype_computed(dtype)


def example_dtype(dtypes) -> torch.dtype:
    """The dtype the fixed examples run in: float32 where supported (the dtype kernels are judged in)."""
    return torch.float32 if torch.float32 in dtypes else list(dtypes)[0]


def missing_feature(prop: Property, backend: Backend, device: str) -> str | None:
    """Why `backend` cannot run `prop` on `device` for want of a feature (or of what `prop.applies` asks), or None."""
    reasons = [r for f in prop.features if (r := backend.why_no_feature(f, device))]
    reasons += [r] if prop.applies and (r := prop.applies(backend, device)) else []
    return "; ".join(reasons) or None


def has_backward(backend: Backend, device: str) -> bool:
    """False where the backend declares it has no backward on this device (forward-only backends)."""
    why = getattr(backend, "why_no_backward", None)
    return why is None or why(device) is None


def two_run_bounds(case: Case, q, k, v, dout) -> dict[str, float]:
    """2 * atol_d per result (out, dq, dk, dv): the most two correct runs of the same exact value can differ."""
    mags = grad_magnitudes(q, k, v, dout, causal=case.causal, scale=case.scale)
    a = abs_logit_bound(q, k, case.scale)
    n = {"out": case.Tk, "dq": case.Tk, "dk": case.Tq, "dv": case.Tq}
    return {name: 2.0 * rounding_noise(rule_dtype(case.dtype), mags[name], a, n_terms=n[name]) for name in n}
