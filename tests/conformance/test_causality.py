"""Causality at op level (future inputs, gradients, prefix runs; Tq < Tk in absolute positions) and in the GPT."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.properties import check_backend


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("prop", ["causal_future", "causal_grad_zero", "causal_prefix", "model_causal"])
def test_causal(prop, backend, device, record_property):
    check_backend(prop, backend, device, record_property)
