"""Other projects' kernels: import-free registration, skip reasons, forward-only backends, and each difference of
a foreign kernel's native convention from the contract, caught by the conformance suite's own properties."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import attnbench
import pytest
import torch
from attnbench import AttentionInputError, Backend, foreign, get_backend
from attnbench.bench.measuring.measure import unavailable_reason
from attnbench.conformance.equivalence import explicit_scale
from attnbench.conformance.properties import PROPERTIES, property_dtypes, run_property
from attnbench.conformance.strategies import Case
from spine_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

FOREIGN = {  # backend -> the module it imports on its first call
    "jax_dpa": "jax",
    "onnx_attention": "onnxruntime",
    "onnx_mha": "onnxruntime",
    "flash_attn": "flash_attn",
    "flash_attn_kvcache": "flash_attn",
    "xformers_mea": "xformers",
}
FORWARD_ONLY = ("onnx_attention", "onnx_mha", "flash_attn_kvcache")
CPU_ADAPTERS = {"jax_dpa": "jax", "onnx_attention": "onnxruntime", "onnx_mha": "onnxruntime"}
# Tq < Tk, causal: where a top-left causal mask and the contract's bottom-right one differ
DECODE_CASE = Case(B=1, H=2, Tq=3, Tk=7, D=8, dtype=torch.float32, causal=True, magnitude=1.0, layout="contiguous",
                   seed=3, scale=0.4)  # fmt: skip


def test_registration_imports_no_foreign_package():
    code = (
        "import sys, attnbench, torch\n"
        f"names = {sorted(FOREIGN)!r}\n"
        "assert set(names) <= set(attnbench.backend_names())\n"
        "[attnbench.get_backend(n).why_no_backward('cpu') for n in names]\n"
        f"print(sorted(m for m in {sorted(set(FOREIGN.values()))!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["flash_attn", "flash_attn_kvcache", "xformers_mea"])
def test_cuda_adapters_skip_with_their_reason(name):
    b = get_backend(name)
    assert "CUDA" in b.why_unsupported("cpu", torch.float16)
    if not torch.cuda.is_available():
        assert b.why_unsupported("cuda", torch.float16) == "CUDA is not available on this machine"


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_missing_package_is_the_reason(name, monkeypatch):
    monkeypatch.setattr(foreign.importlib.util, "find_spec", lambda module: None)
    reason = get_backend(name).why_unsupported("cpu", torch.float16)
    assert f"the {FOREIGN[name]} package is not installed" in reason


def test_backward_declarations():
    assert all(get_backend(n).why_no_backward("cpu") for n in FORWARD_ONLY)
    assert all(get_backend(n).why_no_backward("cpu") is None for n in ("jax_dpa", "flash_attn", "xformers_mea", "sdpa"))
    per_device = Backend(
        "x", lambda q, k, v, **kw: q, "x", no_backward_reason=lambda d: "cpu only" if d.type == "cpu" else None
    )
    assert per_device.why_no_backward("cpu") == "cpu only" and per_device.why_no_backward("cuda") is None


def _forward_only_toy() -> Backend:
    """The plain formula with its graph cut: a forward-only backend that needs no foreign package."""

    def fn(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        return attnbench.attend(q, k, v, causal=causal, scale=scale, backend="manual").detach()

    return Backend("forward_only_toy", fn, "manual, detached", no_backward_reason="it is a forward-only toy")


def test_forward_only_backend_refuses_grad_instead_of_a_detached_output():
    b = _forward_only_toy()
    q, k, v = DECODE_CASE.tensors()
    assert b(q, k, v).shape == q.shape
    with pytest.raises(AttentionInputError, match="forward-only on cpu .it is a forward-only toy"):
        b(q.requires_grad_(True), k, v)
    with torch.no_grad():
        b(q, k, v)


def test_gradient_properties_skip_with_the_reason_on_a_forward_only_backend():
    # the gradient-only properties skip with the reason; those with an output half (equivalence, the feature
    # properties) run on the output instead (tests/test_oracles.py shows them catching a forward-only plant)
    b = _forward_only_toy()
    for prop in ("causal_grad_zero", "model_parity"):
        with pytest.raises(pytest.skip.Exception, match="has no backward: it is a forward-only toy"):
            property_dtypes(PROPERTIES[prop], b, "cpu")
    for prop in ("equivalence", "single_token", "huge_logits", "feature_equiv", "hidden_keys"):
        assert property_dtypes(PROPERTIES[prop], b, "cpu")


def test_benchmarks_time_a_forward_only_backend_forward_only():
    b = _forward_only_toy()
    assert unavailable_reason(b, "cpu", torch.float32) is None
    assert unavailable_reason(b, "cpu", torch.float32, backward=True) == "forward-only: it is a forward-only toy"


# ------------------------------------------------------------ native conventions, caught by the suite


def _native(name: str) -> Backend:
    pytest.importorskip(CPU_ADAPTERS[name])
    b = get_backend(name)
    return dataclasses.replace(b, name=f"{name}_native", fn=functools.partial(b.fn, native=True))


@pytest.mark.parametrize("name", sorted(CPU_ADAPTERS))
def test_native_top_left_causal_is_caught_and_the_mapping_passes(name):
    """JAX's is_causal, ONNX Attention's is_causal and MultiHeadAttention's unidirectional differ from the contract
    when Tq < Tk; the adapter's mapping passes the same example."""
    with pytest.raises(AssertionError, match="out: .* > bound"):
        explicit_scale(_native(name), DECODE_CASE, "cpu")
    explicit_scale(get_backend(name), DECODE_CASE, "cpu")
    square = DECODE_CASE.with_(Tq=DECODE_CASE.Tk)
    explicit_scale(_native(name), square, "cpu")  # Tq == Tk: the native causal mask is the contract's


def test_hypothesis_finds_the_native_causal_difference():
    """The property as the suite runs it (drawn cases, not a chosen one) finds JAX's top-left mask."""
    with pytest.raises(AssertionError, match="bound"):
        run_property(
            PROPERTIES["explicit_scale"], _native("jax_dpa"), "cpu", [torch.float32], derandomize=True, max_examples=20
        )


def test_onnx_float64_scale_is_float32_natively():
    """ONNX attributes are float32 (and ONNX Runtime computes its default scale in float32): float64 runs are only
    float32-accurate natively; the adapter applies the scale to q in float64 instead."""
    case = DECODE_CASE.with_(dtype=torch.float64, Tq=DECODE_CASE.Tk)
    with pytest.raises(AssertionError, match="out: .* > bound"):
        explicit_scale(_native("onnx_attention"), case, "cpu")
    explicit_scale(get_backend("onnx_attention"), case, "cpu")


def test_jax_refuses_float64_it_would_compute_in_float32():
    jax = pytest.importorskip("jax")
    if jax.config.jax_enable_x64:
        pytest.skip("jax_enable_x64 is on in this process")
    assert jax.dlpack.from_dlpack(torch.zeros(2, dtype=torch.float64)).dtype == "float32"  # the silent cast
    assert "jax_enable_x64" in get_backend("jax_dpa").why_unsupported("cpu", torch.float64)


def test_xla_cpu_cannot_compile_bf16_attention_of_one_token():
    """Why jax_dpa refuses bfloat16: the suite's causal_prefix drew Tq = Tk = 1 in bf16 and XLA failed to compile
    it. If this starts passing, a new JAX fixed it and bf16 can be declared again."""
    jax = pytest.importorskip("jax")
    x = jax.numpy.ones((1, 1, 1, 1), jax.numpy.bfloat16)  # (B, T, N, H)
    with pytest.raises(jax.errors.JaxRuntimeError, match="ALG_DOT_BF16_BF16_F32"):
        jax.jit(lambda a: jax.nn.dot_product_attention(a, a, a, is_causal=True))(x).block_until_ready()
    assert get_backend("jax_dpa").why_unsupported("cpu", torch.bfloat16) == attnbench.jax_dpa.BF16_REASON
