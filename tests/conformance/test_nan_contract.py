"""The non-finite-input contract (nan_contract.py) on every backend: a violation fails, unless the backend
declares it (Backend.nan_deviation), which reports it as an expected failure carrying that sentence."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.properties import PROPERTIES, check_backend
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_nan_contract(backend, device, record_property):
    # @given sits on the inner function so that a declared violation ends the whole run as one xfail
    # (an xfail raised inside a hypothesis test would be collected as one more failure per example)
    @given(data=st.data())
    def run(data):
        check_backend("nan_contract", backend, device, data, record_property)

    try:
        run()
    except Exception:  # an AssertionError, or hypothesis' group of several distinct ones
        if (departure := PROPERTIES["nan_contract"].departure(backend)) is None:
            raise
        pytest.xfail(f"{backend.name} (declared): {departure}")
