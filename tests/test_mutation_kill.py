"""Mutation kill test: every deliberately broken backend must be caught by at least one named property.

Each mutant runs against every property of tests/properties.py (the same definitions the normal tests use),
on CPU in the dtypes the property draws, with a small fixed number of derandomized examples and no shrinking.
The kill table (mutant x property) is printed in pytest's terminal summary (tests/conftest.py assembles it from
the test reports, so it is complete under pytest-xdist too):
  x = killed by an AssertionError (the property caught it), E = killed by a crash, . = survived,
  - = not applicable (the property needs a feature the mutant does not declare).
"""

from __future__ import annotations

import json

import pytest
import torch
from attnbench import Backend
from attnbench.conformance.properties import PROPERTIES, missing_feature, run_property
from hypothesis import Phase
from mutants import CATALOGUE, KILL_ROW, Mutant
from mutants_features import MUTANTS as FEATURE_MUTANTS
from mutants_kernel_scale import MUTANTS as KERNEL_SCALE
from mutants_online_softmax import MUTANTS as ONLINE_SOFTMAX

KILL_EXAMPLES = 8  # drawn examples per (mutant, property), after the property's fixed kernel-size examples


def all_mutants() -> list[Mutant]:
    return CATALOGUE + ONLINE_SOFTMAX + KERNEL_SCALE + FEATURE_MUTANTS


def _verdict(prop_name: str, backend: Backend) -> str:
    prop = PROPERTIES[prop_name]
    if missing_feature(prop, backend, "cpu"):
        return "-"
    dtypes = [torch.float32] if prop.level == "model" else list(prop.dtypes or (torch.float32, torch.float64))
    try:
        run_property(
            prop,
            backend,
            "cpu",
            dtypes,
            max_examples=KILL_EXAMPLES,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: we only need "caught or not"
            report_multiple_bugs=False,
        )
    except Exception as e:  # noqa: BLE001  a crash (shape errors...) also exposes the bug
        if prop_name == "nan_contract" and backend.nan_deviation:
            return "."  # a declared departure: the suite reports it as an expected failure, not as a bug found
        return "x" if _only_assertions(e) else "E"
    return "."


def _only_assertions(e: BaseException) -> bool:
    """True for an AssertionError, or a group of them (hypothesis groups the failures of a flaky mutant)."""
    inner = getattr(e, "exceptions", None)
    return all(_only_assertions(x) for x in inner) if inner else isinstance(e, AssertionError)


@pytest.mark.parametrize("mutant", all_mutants(), ids=lambda m: m.name)
def test_mutant_is_killed(mutant: Mutant, record_property):
    backend = Backend(  # never registered
        f"mutant:{mutant.name}", mutant.fn, mutant.bug, features=mutant.features, nan_deviation=mutant.nan_deviation
    )
    verdicts = {name: _verdict(name, backend) for name in PROPERTIES}
    # The row travels on the test report (pytest-xdist sends it from the worker), and tests/conftest.py
    # assembles the table in the process that prints the summary.
    record_property(KILL_ROW, json.dumps({"mutant": mutant.name, "order": all_mutants().index(mutant), **verdicts}))
    killers = [n for n, v in verdicts.items() if v in "xE"]
    assert killers, f"mutant {mutant.name!r} ({mutant.bug}) survived every property: {list(PROPERTIES)}"


def test_catalogue_is_never_registered():
    import attnbench

    names = set(attnbench.backend_names())
    leaked = [m.name for m in all_mutants() if m.name in names or m.fn in {b.fn for b in attnbench.all_backends()}]
    assert not leaked, f"mutants registered as real backends: {leaked}"
