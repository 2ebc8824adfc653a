"""The transformers model properties (conformance/test_hf_models.py) can fail: feature mutants that real models
exercise are caught inside the model, by the same pass rules the suite applies."""

import pytest
import torch
from attnbench import Backend
from attnbench.conformance import hf_models
from mutants_features import MUTANTS as FEATURE_MUTANTS
from mutants_scores import MUTANTS as SCORE_MUTANTS

pytestmark = pytest.mark.skipif(hf_models.missing_transformers() is not None, reason=hf_models.INSTALL)
BY_NAME = {m.name: m for m in FEATURE_MUTANTS + SCORE_MUTANTS}
TOKENS = torch.randint(0, hf_models.COMMON["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))


def backend(name: str) -> Backend:
    m = BY_NAME[name]
    return Backend(f"mutant:{name}", m.fn, m.bug, features=m.features)


@pytest.mark.parametrize(
    "family, mutant",
    [
        ("llama", "gqa_tiled_heads"),
        ("mistral", "window_one_extra"),
        ("gemma2", "softcap_no_rescale"),
        ("gpt_oss", "sink_bwd_without_sink"),
        ("gpt_oss", "sink_no_grad"),
    ],
)
def test_a_broken_kernel_fails_the_model_parity_rule(family, mutant):
    errors = {what: (err, bound) for what, err, bound in hf_models.parity(backend(mutant), family, TOKENS)}
    assert errors["grads"][0] > 100 * errors["grads"][1], errors  # far outside the rule, not at its edge
    if not mutant.startswith("sink"):  # a sink bug of the backward alone leaves the logits right
        assert errors["logits"][0] > 100 * errors["logits"][1], errors


def test_a_broken_kernel_changes_the_generated_tokens():
    truth = hf_models.use_backend(hf_models.build("llama", torch.float64), hf_models.REFERENCE)
    model = hf_models.use_backend(hf_models.build("llama", torch.float64), backend("gqa_tiled_heads"))
    assert not torch.equal(hf_models.greedy(model, TOKENS[:, :8], 8), hf_models.greedy(truth, TOKENS[:, :8], 8))


def test_the_eager_baseline_is_float32_accurate_and_the_reference_float64():
    # The pass rule compares a backend's float32 error with eager's: eager must not be exact (a zero bound) and the
    # reference model in float64 must agree with eager float64 to float32 accuracy only (eager's float32 softmax).
    tokens = TOKENS
    truth = hf_models.use_backend(hf_models.build("llama", torch.float64), hf_models.REFERENCE)
    eager64 = hf_models.use_backend(hf_models.build("llama", torch.float64), None)
    eager32 = hf_models.use_backend(hf_models.build("llama", torch.float32), None)
    with torch.no_grad():
        want = truth(tokens).logits
        assert 1e-9 < (eager64(tokens).logits - want).abs().max() < 1e-5
        assert 1e-9 < (eager32(tokens).logits.double() - want).abs().max() < 1e-4
