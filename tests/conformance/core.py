"""What a conformance property is, the registry of them (PROPERTIES) and the helpers property modules share.

Each property is declared where it is defined, with @conformance_property; properties.py imports every module of
properties (equivalence, causality, structure, ...), and each family's test module runs that family's properties.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from attnbench import Backend
from hypothesis import strategies as st

from .reference import RuleResult, abs_logit_bound, attention_formula, grad_magnitudes, rounding_noise
from .strategies import Case, boundary_cases, long_rows_enabled


def boundary_examples(dtype: torch.dtype) -> list[Case]:
    """The boundary cases (strategies.boundary_cases) of the current profile: the default fixed examples."""
    return boundary_cases(dtype, long=long_rows_enabled())


# The families of properties, each run by the test module of its name (tests/conformance/test_<family>.py, which
# calls properties.property_tests(family)); the report reads them (e.g. "causality") instead of test names.
FAMILIES = (
    "equivalence",
    "causality",
    "structure",
    "metamorphic",
    "contract",
    "determinism",
    "global_state",
    "features",
    "serving",
    "model_parity",
    "model_features",
    "nan_contract",
)


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[Backend, object, str], RuleResult | None]
    strategy: Callable[[list[torch.dtype]], st.SearchStrategy]  # dtypes -> cases
    doc: str
    family: str  # one of FAMILIES: the test module that runs it
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


def conformance_property(name: str, family: str, strategy, doc: str, **needs):
    """Declare the decorated `check(backend, case, device)` a conformance property, where it is defined: it joins
    PROPERTIES under `name`, drawn from `strategy` (dtypes -> cases), and runs in its family's generated tests
    (properties.property_tests), so no property can go unrun; `needs` are Property's other fields (examples,
    features, needs_backward, uses_dropout, level, dtypes, applies). A check may carry several declarations."""
    if family not in FAMILIES:
        raise ValueError(f"property {name!r}: unknown family {family!r}; known: {FAMILIES}")

    def declare(check):
        if name in PROPERTIES:
            raise ValueError(f"property {name!r} is already registered")
        PROPERTIES[name] = Property(name, check, strategy, doc, family, **needs)
        return check

    return declare


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


def leaf(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """A leaf requiring grad; without a dtype it is t itself (a view keeps its strides, non-contiguous or not)."""
    if dtype is None or dtype == t.dtype:
        return t.detach().requires_grad_(True)
    return t.detach().to(dtype).requires_grad_(True)


def forward_bound(case: Case, q, k, v) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ref64 output, naive_d output and atol_d for the forward of this case (inputs q, k, v)."""
    ref = attention_formula(q.double(), k.double(), v.double(), causal=case.causal, scale=case.scale)
    d = rule_dtype(case.dtype)
    naive = attention_formula(q.to(d), k.to(d), v.to(d), causal=case.causal, scale=case.scale)
    a = abs_logit_bound(q, k, case.scale)
    atol = rounding_noise(d, float(v.abs().max()), a, n_terms=case.Tk)
    return ref, naive, atol


def worst(results: list[RuleResult]) -> RuleResult:
    return max(results, key=lambda r: r.ratio)


def mapped(fn):
    """Fixed examples: the boundary cases, each passed through `fn` (to fit the property's preconditions)."""
    return lambda dtype: [fn(c) for c in boundary_examples(dtype)]


def assert_within(what: str, got: torch.Tensor, want: torch.Tensor, bound: float, ctx: str) -> None:
    """Two results of the same exact value (two runs each within the pass rule, or a run and a rearranged run) agree
    to `bound`: max |got - want| <= bound, every element finite. A failure names the worst element and both values."""
    diff = (got.detach().double() - want.detach().double()).abs()
    if diff.numel() == 0:
        return
    err = float(diff.max()) if torch.isfinite(diff).all() else math.inf
    if not err <= bound:
        flat = int(torch.nan_to_num(diff, nan=math.inf).argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        raise AssertionError(
            f"{what}: differ by {err:.3e} > {bound:.3e} at {idx}: {float(got[idx]):.9e} vs {float(want[idx]):.9e} {ctx}"
        )
