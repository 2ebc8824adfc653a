"""The conformance suite's runner: the registered properties (PROPERTIES, each declared where it is defined with
@core.conformance_property), run as tests and by the mutation kill test.

`property_tests(family)` gives a family's two tests (drawn cases, fixed kernel-size examples), each parametrized
by every property of that family, so a newly declared property runs without being listed anywhere. The normal
tests and the mutation kill test (run_property) run these same definitions: "killed by property P" means "P as
the suite runs it".
"""

from __future__ import annotations

import pytest
import torch
from attnbench import Backend
from hypothesis import example, given, settings
from hypothesis import strategies as st

from . import (  # noqa: F401  (importing a module of properties declares them)
    causality,
    contract,
    determinism,
    equivalence,
    features,
    fp8,
    global_state,
    lse_merge,
    metamorphic,
    model,
    nan_contract,
    serving,
    structure,
)
from .backends import backend_params, candidate_dtypes, device_params, supported_dtypes
from .core import FAMILIES, PROPERTIES, Property, example_dtype, judging, missing_feature
from .reference import RuleResult
from .strategies import ModelCase, kernel_sizes_enabled


def run_property(prop: Property, backend: Backend, device: str, dtypes, **overrides) -> list[RuleResult]:
    """Run `prop` under hypothesis (current profile, plus `overrides`), its fixed examples first; return the
    RuleResults it produced (no fixed examples under strategies.toy_sizes_only). The mutation kill test uses
    this; the suite's tests carry their own @given."""
    results: list[RuleResult] = []

    def run(case):
        with judging(backend):
            r = prop.check(backend, case, device)
        if r is not None:
            results.append(r)

    run = given(case=prop.strategy(list(dtypes)))(run)
    for case in reversed(prop.examples(example_dtype(dtypes)) if kernel_sizes_enabled() else []):
        run = example(case=case)(run)
    settings(**overrides)(run)()
    return results


def property_dtypes(prop: Property, backend: Backend, device: str, record_property=None) -> list[torch.dtype]:
    """The dtypes `prop` runs in on this backend and device; skips (with the backend's reason) where it cannot run.

    With pytest's `record_property`, the junit XML gets backend and property first, so that a skip is counted
    under them too."""
    if record_property is not None:
        record_property("backend", backend.name)
        record_property("property", prop.name)
        record_property("family", prop.family)  # what the report counts by (e.g. causality), not test names
    if prop.uses_dropout and (reason := backend.why_no_dropout(device)):
        pytest.skip(f"{backend.name} on {device}: {reason}")
    why_no_backward = getattr(backend, "why_no_backward", None)  # forward-only backends declare it
    if prop.needs_backward and why_no_backward is not None and (reason := why_no_backward(device)):
        pytest.skip(f"{backend.name} on {device} has no backward: {reason}")
    if reason := missing_feature(prop, backend, device):
        pytest.skip(f"{backend.name} on {device}: {reason}")
    wanted = [torch.float32] if prop.level == "model" else candidate_dtypes(device)
    if prop.dtypes is not None:
        wanted = [d for d in wanted if d in prop.dtypes]
    return supported_dtypes(backend, device, wanted)


_worst_seen: dict[tuple[str, str, str], RuleResult] = {}  # (property, backend, device) -> worst pass-rule result

_largest: dict[tuple[str, str, str], dict[str, int]] = {}  # (property, backend, device) -> largest T, D, B*H run


def case_sizes(case) -> dict[str, int]:
    """The sizes a case reaches: longest sequence T, head dim D, programs B*H (a GPT: head size, B * heads)."""
    if isinstance(case, ModelCase):
        return {"T": case.T, "D": case.head_size, "BH": case.B * case.n_head}
    case = getattr(case, "base", case)  # a features.FeatureCase carries its sizes in a Case
    return {"T": max(case.Tq, case.Tk), "D": case.D, "BH": case.B * case.H}


def _record(prop: Property, backend: Backend, device: str, case, result, record_property) -> None:
    """Record the largest sizes run and the worst pass-rule result per (property, backend, device); the last
    value recorded under a name is the largest (or worst) so far, which is what the report and verdict read."""
    if record_property is None:
        return
    key = (prop.name, backend.name, device)
    largest = _largest.setdefault(key, {"T": 0, "D": 0, "BH": 0})
    for name, n in case_sizes(case).items():
        if n > largest[name]:
            largest[name] = n
            record_property(f"largest_{name}", n)
    if result is not None and (key not in _worst_seen or result.ratio > _worst_seen[key].ratio):
        _worst_seen[key] = result
        record_property("max_err", result.err)
        record_property("bound", result.bound)


def check_backend(name: str, backend: Backend, device: str, data, record_property=None) -> None:
    """One hypothesis example of property `name` on `backend`: draw a case from `data` (st.data()) and check it.

    Call it from a test decorated with @given(data=st.data()), so that each (property, backend, device) has
    its own example database key and derandomized seed (hypothesis keys parametrized tests by node id)."""
    prop = PROPERTIES[name]
    dtypes = property_dtypes(prop, backend, device, record_property)
    case = data.draw(prop.strategy(dtypes), label="case")
    with judging(backend):
        _record(prop, backend, device, case, prop.check(backend, case, device), record_property)


def check_examples(name: str, backend: Backend, device: str, record_property=None) -> int:
    """Run property `name`'s fixed kernel-size examples (every profile); returns how many ran."""
    prop = PROPERTIES[name]
    fixed = prop.examples(example_dtype(property_dtypes(prop, backend, device, record_property)))
    if not fixed:
        pytest.skip(f"{name} has no fixed examples (its cost grows with the size: drawn toy sizes only)")
    for case in fixed:
        with judging(backend):
            _record(prop, backend, device, case, prop.check(backend, case, device), record_property)
    return len(fixed)


def property_tests(family: str):
    """The two tests of a family of properties (core.FAMILIES), each parametrized by property, backend and device:

    drawn: @given(data=st.data()), one example database key and derandomized seed per (property, backend,
           device); a failure prints the shrunk Case and the @reproduce_failure line to replay it;
    fixed: the property's fixed kernel-size examples (tile boundaries, real head dims, many programs).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    names = [name for name, prop in PROPERTIES.items() if prop.family == family]
    grid = [
        pytest.mark.parametrize("device", device_params()),
        pytest.mark.parametrize("backend", backend_params()),
        pytest.mark.parametrize("prop", names),
    ]

    @given(data=st.data())
    def drawn(prop, backend, device, data, record_property):
        check_backend(prop, backend, device, data, record_property)

    def fixed(prop, backend, device, record_property):
        check_examples(prop, backend, device, record_property)

    for mark in grid:
        drawn, fixed = mark(drawn), mark(fixed)
    return drawn, fixed
