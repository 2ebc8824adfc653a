"""Structural properties: convex combination, batch/head independence, dropout, huge logits, eval mode."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.properties import check_backend


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("prop", ["convex", "permutation", "dropout_mean", "dropout_off", "huge_logits", "model_eval"])
def test_property(prop, backend, device, record_property):
    check_backend(prop, backend, device, record_property)
