"""`jax_dpa`: JAX's `jax.nn.dot_product_attention` (XLA on CPU) on torch tensors, gradients through `jax.vjp`.

The mapping from the contract to JAX, written once here (install with `pip install 'attnbench[jax]'`):

- Layout: torch's (B, H, T, D) is JAX's (B, T, N, H); the transposes happen inside the jitted function, so the
  tensors cross as they are.
- Crossing: torch -> JAX and back by DLPack, zero-copy for contiguous tensors; a non-contiguous input is made
  contiguous in torch first (a copy; the GPT's (B, T, H, D)-strided q, k, v are one). `crossing_fn` times it.
- Causal: JAX's `is_causal` aligns the mask to the top left (`jnp.tril` of a (T, S) block), so with Tq < Tk the
  query i sees keys 0 .. i, not the contract's 0 .. Tk - Tq + i. For Tq == Tk both agree and `is_causal` is
  passed; for Tq < Tk the adapter passes the contract's bottom-right mask as `mask`. `native=True` passes
  `is_causal` always (JAX's own convention), which the conformance suite rejects (tests/test_foreign.py).
- Scale: passed explicitly (the contract's 1/sqrt(D) by default; JAX's default is the same).
- GQA: JAX groups query heads as (kv head, group), so query head h reads kv head h // (Hq // Hkv): the contract's.
- bfloat16: refused (XLA on CPU fails to compile it for Tq = Tk = 1, see BF16_REASON).
- float64: only with JAX's process-wide `jax_enable_x64`; without it JAX's DLPack import silently turns float64
  into float32, so the backend refuses float64 then instead of computing in the wrong precision.
- Compilation: one jitted function per static configuration (causal, scale, alignment); jax.jit compiles it
  once per shape and dtype and caches the executable.
- Backward: a jitted `jax.vjp` that recomputes the forward (the XLA path keeps no residuals for us).
- Threads: XLA sizes its CPU thread pool when JAX starts, not per call (torch.set_num_threads does not reach it).
- No dropout (jax.nn.dot_product_attention has none).
"""

from __future__ import annotations

import functools

import torch

from .contract import NAN_IN_FUTURE_VALUE
from .dense import default_scale
from .foreign import CROSSINGS, contiguous, missing_package_reason
from .registry import register_backend

DTYPES = (torch.float32, torch.float16)  # float64 too where jax_enable_x64 is on
# bfloat16 is refused: XLA on CPU fails to compile the jitted bf16 attention of a single query and key
# ("Algorithm not supported by the ElementalIrEmitter: ALG_DOT_BF16_BF16_F32"; jax 0.10.2), a case the suite draws
BF16_REASON = "XLA on CPU fails to compile jitted bf16 attention with Tq = Tk = 1 (ALG_DOT_BF16_BF16_F32)"


@functools.cache
def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def _to_jax(t: torch.Tensor):
    jax, _ = _jax()
    return jax.dlpack.from_dlpack(contiguous(t))


def _to_torch(a) -> torch.Tensor:
    return torch.from_dlpack(a)


@functools.lru_cache(maxsize=256)
def _jitted(causal: bool, scale: float, native: bool):
    """(forward, backward) jitted on (B, H, T, D) arrays, for one static configuration."""
    jax, jnp = _jax()

    def attention(q, k, v):  # (B, Hq, Tq, D), (B, Hkv, Tk, D) x2 -> (B, Hq, Tq, D)
        tq, tk = q.shape[2], k.shape[2]
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, T, N, D): JAX's layout
        bottom_right = causal and tq < tk and not native
        mask = jnp.tril(jnp.ones((tq, tk), dtype=bool), k=tk - tq)[None, None] if bottom_right else None
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=scale, is_causal=causal and not bottom_right, implementation="xla"
        )  # (B, Tq, Hq, D)
        return jnp.swapaxes(out, 1, 2)

    def backward(q, k, v, dout):
        return jax.vjp(attention, q, k, v)[1](dout)  # (dq, dk, dv)

    return jax.jit(attention), jax.jit(backward)


class _JaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, fns):
        forward, ctx.backward_fn = fns
        ctx.save_for_backward(q, k, v)
        return _to_torch(forward(_to_jax(q), _to_jax(k), _to_jax(v)))

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        grads = ctx.backward_fn(_to_jax(q), _to_jax(k), _to_jax(v), _to_jax(dout))
        return (*(_to_torch(g) for g in grads), None)


def jax_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, native: bool = False):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
    if dropout_p > 0:
        raise NotImplementedError("jax.nn.dot_product_attention has no dropout")
    return _JaxAttention.apply(q, k, v, _jitted(causal, default_scale(q, scale), native))


def crossing_fn(q, k, v) -> torch.Tensor:
    """The backend's crossing alone: q, k, v into JAX by DLPack, a jitted identity on q, the result back."""
    return _to_torch(_jitted_identity()(_to_jax(q), _to_jax(k), _to_jax(v)))


@functools.cache
def _jitted_identity():
    jax, _ = _jax()
    return jax.jit(lambda q, k, v: q)


def _x64_enabled() -> bool:
    jax, _ = _jax()
    return bool(jax.config.jax_enable_x64)


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := missing_package_reason("jax", "pip install 'attnbench[jax]'"):
        return reason
    if device.type != "cpu":
        return f"the JAX adapter runs XLA on CPU (torch and JAX share CPU memory by DLPack), not {device.type}"
    if dtype == torch.float64:
        return None if _x64_enabled() else "JAX computes float64 only with jax_enable_x64 (a process-wide switch)"
    if dtype == torch.bfloat16:
        return BF16_REASON
    return None if dtype in DTYPES else f"jax.nn.dot_product_attention on CPU takes fp32/fp16 here, not {dtype}"


register_backend(
    "jax_dpa",
    jax_attention,
    "JAX jax.nn.dot_product_attention (XLA, CPU) via DLPack; bottom-right causal mask for Tq < Tk; jax.vjp backward",
    _reason,
    features={"gqa"},  # nothing else of the contract's features: no window, mask_mod, document_ids or softcap here
    no_dropout_reason=lambda device: "jax.nn.dot_product_attention has no dropout",
    nan_departure=NAN_IN_FUTURE_VALUE.said_of("XLA's dot_product_attention"),
)
CROSSINGS["jax_dpa"] = crossing_fn
