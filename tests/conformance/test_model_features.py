"""The GPT with grouped-query attention (n_kv_head) and a sliding window: causality, window reach, parity."""

import pytest
from attnbench.conformance.backends import backend_params, device_params
from attnbench.conformance.model_features import MODEL_FEATURE_PROPERTIES
from attnbench.conformance.properties import check_backend


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("prop", [p.name for p in MODEL_FEATURE_PROPERTIES])
def test_model_feature_property(prop, backend, device, record_property):
    check_backend(prop, backend, device, record_property)
