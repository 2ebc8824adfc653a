"""Equivalence: every backend's output and gradients match a float64 reference by the pass rule.

Pass rule (tests/reference.py): max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d for x in out, dq, dk, dv.
"""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.properties import check_backend


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("prop", ["equivalence", "explicit_scale", "single_token"])
def test_matches_float64_reference(prop, backend, device, record_property):
    check_backend(prop, backend, device, record_property)
