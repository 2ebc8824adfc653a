"""Model parity: one GPT and state_dict; logits, loss, grads and one AdamW step agree with float64 by the rule."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.properties import check_backend


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_model_parity(backend, device, record_property):
    check_backend("model_parity", backend, device, record_property)
