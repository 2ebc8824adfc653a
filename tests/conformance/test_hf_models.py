"""The backend inside real transformers models (hf_models.py): Llama, Mistral and Gemma 2, tiny and random.

Pass criteria, per model family:
- logits and every parameter's gradient of a float32 model running the backend are within twice the error of the
  same model running transformers' own eager attention in float32 (flash-attention's rule: a kernel may be as far
  from the float64 truth as twice the library's own implementation in the same precision), the truth being the
  float64 model running the suite's float64 formula;
- greedy generation with the KV cache (each new token a Tq = 1 decode call), in float64, gives the same tokens as
  the float64 reference model.
"""

import pytest
import torch
from attnbench.conformance import hf_models
from attnbench.conformance.backends import backend_params, device_params

TOKENS = torch.randint(0, hf_models.COMMON["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
PROMPT, STEPS = TOKENS[:, :8], 8


def runnable(backend, device: str, family: str, dtype: torch.dtype, record_property, name: str) -> None:
    """Record the verdict cell; skip, with the reason, where the model cannot run on this backend."""
    record_property("backend", backend.name)
    record_property("property", name)
    if reason := hf_models.missing_transformers():
        pytest.skip(reason)
    for feature in hf_models.FAMILIES[family][3]:
        if reason := backend.why_no_feature(feature, device):
            pytest.skip(f"{backend.name} on {device}: {reason}")
    if reason := backend.why_unsupported(device, dtype):
        pytest.skip(f"{backend.name} on {device}/{dtype}: {reason}")


@pytest.mark.parametrize("family", list(hf_models.FAMILIES))
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_hf_model_logits_and_gradients(backend, device, family, record_property):
    runnable(backend, device, family, torch.float32, record_property, "hf_model_parity")
    if reason := backend.why_no_backward(device):
        pytest.skip(f"{backend.name} on {device} has no backward: {reason}")
    record_property("largest_T", TOKENS.size(1))
    for what, err, bound in hf_models.parity(backend, family, TOKENS.to(device)):
        assert err <= bound, f"{family} {what}: {backend.name} is {err:.3e} from float64, eager float32 {bound / 2:.3e}"


@pytest.mark.parametrize("family", list(hf_models.FAMILIES))
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
def test_hf_model_greedy_generation_with_kv_cache(backend, device, family, record_property):
    runnable(backend, device, family, torch.float64, record_property, "hf_model_generate")
    truth = hf_models.use_backend(hf_models.build(family, torch.float64).to(device), hf_models.REFERENCE)
    model = hf_models.use_backend(hf_models.build(family, torch.float64).to(device), backend)
    want = hf_models.greedy(truth, PROMPT.to(device), STEPS)
    got = hf_models.greedy(model, PROMPT.to(device), STEPS)
    assert torch.equal(got, want), f"{family}: {backend.name} generated {got.tolist()}, the reference {want.tolist()}"
