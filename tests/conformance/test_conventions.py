"""The declared departures from the empty-row and compute-dtype conventions (Backend.empty_row_departure,
Backend.precision_departure), each shown once per backend.

The properties hold a declaring backend to what it declares (features.held_empty_rows; core.rule_dtype), so one
known cause never fails several properties; here the convention probe (probe.py) looks for the departure itself:
seen as declared, the test ends as an expected failure carrying the declaration's sentence, reported "declared";
not seen, or another departure seen, it fails, since an unneeded declaration would excuse what the contract holds.
"""

import pytest
import torch
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.probe import EMPTY_ROW_OUTPUT, probe_computed_dtype, probe_empty_rows


def _record(record_property, backend, prop: str) -> None:
    record_property("backend", backend.name)
    record_property("property", prop)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_empty_row_departure(backend, device, record_property):
    # Pass criterion (as an expected failure): a row that sees no key comes out as one of the declared outputs.
    declared = backend.empty_row_departure
    if declared is None:  # nothing to show: not counted in the verdict
        pytest.skip(f"{backend.name} declares no empty-row departure (rows that see no key are held to 0)")
    _record(record_property, backend, "empty_row_convention")
    if reason := backend.why_no_feature("mask_mod", device):
        pytest.fail(f"{backend.name} declares an empty-row departure, but no row can be empty: {reason}")
    dtype = next((dt for dt in (torch.float32, torch.bfloat16) if backend.supports(device, dt)), None)
    if dtype is None:
        pytest.skip(f"{backend.name} runs neither float32 nor bfloat16 on {device}")
    seen = probe_empty_rows(backend, dtype, device)
    if not seen.declared:
        pytest.fail(
            f"{backend.name} declares that a row seeing no key comes out as {sorted(declared.outputs)}, but it comes "
            f"out as {seen.found} ({seen.evidence}): "
            + ("remove the declaration" if seen.found == seen.contract else "declare what it does")
        )
    pytest.xfail(f"{backend.name} (declared; seen: {EMPTY_ROW_OUTPUT[seen.found]}): {declared}")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_precision_departure(backend, device, record_property):
    # Pass criterion (as an expected failure): each declared input dtype's error from float64 is above its own
    # rounding noise and within the declared lower dtype's (probe.probe_computed_dtype).
    declared = backend.precision_departure
    if declared is None:  # nothing to show: not counted in the verdict
        pytest.skip(f"{backend.name} declares no precision departure (each dtype is judged by its own rounding)")
    _record(record_property, backend, "precision_convention")
    runs = {given: used for given, used in declared.computes.items() if backend.supports(device, given)}
    if not runs:
        pytest.skip(f"{backend.name} runs none of {sorted(map(str, declared.computes))} on {device}")
    seen = []
    for given, used in runs.items():
        finding = probe_computed_dtype(backend, given, device)
        if not finding.declared:
            pytest.fail(
                f"{backend.name} declares computing {given} in {used}, but {finding.convention} is {finding.found} "
                f"({finding.evidence}): "
                + ("remove the declaration" if finding.found == finding.contract else "declare what it does")
            )
        seen.append(f"{given} in {finding.found}".replace("torch.", ""))
    pytest.xfail(f"{backend.name} (declared; seen: {', '.join(seen)}): {declared}")
