"""The non-finite-input contract (nan_contract.py) on every backend: a violation fails, unless the backend
declares that very departure (Backend.nan_departure, a NanDeparture); a declared departure seen on the showcase
case is reported as an expected failure carrying its sentence, so it stays visible."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.core import example_dtype
from attnbench.conformance.nan_contract import nan_violations, showcase
from attnbench.conformance.properties import PROPERTIES, check_backend, property_dtypes
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_nan_contract(backend, device, record_property):
    # Pass criterion: no drawn case shows a violation the backend has not declared (the property raises on the
    # first one); then a declared departure that the showcase case shows ends the test as an xfail naming it.
    @given(data=st.data())
    def run(data):
        check_backend("nan_contract", backend, device, data, record_property)

    run()
    dtype = example_dtype(property_dtypes(PROPERTIES["nan_contract"], backend, device))
    if backend.nan_departure is not None and (seen := nan_violations(backend, showcase(dtype), device)):
        kinds = ", ".join(sorted({f"{v.kind} a NaN in {v.where}" for v in seen}))
        pytest.xfail(f"{backend.name} (declared; seen: {kinds}): {backend.nan_departure}")
