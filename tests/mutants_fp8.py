"""Deliberately broken fp8 attention (the contract's fp8 inputs with descales), each over `manual`'s float32 math
and each a bug seen in real kernels. Test assets only, never registered.

- drops_descales: the fp8 values used as they are, every descale dropped (vllm-project/vllm#51363: the FA4 path
  dropped per-head q/k/v descales, producing garbage with attention-quantized checkpoints).
- drops_kv_descale_for_fp8_q: k and v read without their descales when q is fp8 too (vllm-project/vllm#42580: the
  Triton unified attention's fp8-Q fast path returned `data.to(Q.dtype)`, never reading the descale).
- ignores_v_scale: v's descale lost on the way in (flashinfer-ai/flashinfer#1023: k_scale/v_scale passed
  positionally into *args and never applied in BatchPrefillWithPagedKVCacheWrapper).
- divides_by_descale: a descale applied as a scale, x / d instead of x * d (ROCm/aiter#2267 had to pin the
  convention down: descaling is tensor * descale, scaling tensor / scale).
- first_head_descale: one descale for every head, that of kv head 0 (a per-tensor kernel given per-head descales;
  the vllm#51363 fix added a test with non-unity per-KV-head descales because a unity one hid exactly this).
- scores_in_fp8: the scores rounded to e4m3 before the softmax, not the probabilities after it (a logit's rounding
  is amplified by exp: what FlashAttention-3 avoids by keeping S in float32 and quantizing P).
- p_without_prescale: FlashAttention-3's P path, but P in (0, 1] cast to e4m3 with no 2^8 pre-scale, the denominator
  from the unrounded P, so a diffuse tail below 2^-10 flushes to 0 from the numerator only
  (flashinfer-ai/flashinfer#5020; ROCm/FlyDSL#1020: "fp8 gives 0.637" where V is all ones).
- p_saturates_at_stale_max: P pre-scaled by 2^8 against a stale max (the first 128-key block's, kept while the true
  max is less than 4 log2 units above it, to skip a rescale), so the cast saturates it at 448
  (Dao-AILab/flash-attention#2716, fixed by #2717: max_offset + rescale_threshold must stay within log2(448)).
"""

from __future__ import annotations

import math

import torch
from attnbench.call import FP8
from attnbench.dense import dequantize
from attnbench.manual import manual_attention
from mutants import Mutant

FEATURES = frozenset({"gqa", "fp8"})
STALE_BLOCK = 128  # the key block whose max a rescale-skipping kernel keeps
RESCALE_THRESHOLD = 4.0  # log2 units the true max may exceed the kept one by before the kernel rescales


def fa3_p_path(q, k, v, *, causal=True, scale=None, dropout_p=0.0, bug=""):
    """FlashAttention-3's fp8 P path on dequantized float32 q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D): P = 2^8 exp(s - m)
    cast to e4m3 (saturating at 448) for P @ V, the denominator summed from the unrounded P; bug="" is correct."""
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), 1) for t in (k, v))  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5 if scale is None else scale)  # (B, Hq, Tq, Tk)
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    m = s.amax(-1, keepdim=True)  # (B, Hq, Tq, 1)
    if bug == "p_saturates_at_stale_max":
        first = s[..., :STALE_BLOCK].amax(-1, keepdim=True)  # -inf where the row sees nothing there
        m = torch.where((m - first) / math.log(2.0) < RESCALE_THRESHOLD, first, m)
    p = (s - m).exp() * (1.0 if bug == "p_without_prescale" else 2.0**8)  # (B, Hq, Tq, Tk)
    p8 = p.clamp(max=448.0).to(FP8).float()  # the cast saturates (satfinite)
    return ((p8 @ v) / p.sum(-1, keepdim=True)).to(torch.bfloat16)  # (B, Hq, Tq, D)


def _scores_in_fp8(q, k, v, *, causal=True, scale=None, dropout_p=0.0):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D), float32
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), 1) for t in (k, v))  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5 if scale is None else scale)  # (B, Hq, Tq, Tk)
    s = s.to(FP8).float()  # the bug: the scores in e4m3
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    return (s.softmax(-1) @ v).to(torch.bfloat16)


def _one_bug(bug: str):
    def fn(q, k, v, *, descale=None, **kw):
        if descale is None:
            return manual_attention(q, k, v, **kw)
        qd, kd, vd = descale
        if bug == "drops_descales":
            qd, kd, vd = (torch.ones_like(d) for d in descale)
        elif bug == "drops_kv_descale_for_fp8_q":
            kd, vd = torch.ones_like(kd), torch.ones_like(vd)
        elif bug == "ignores_v_scale":
            vd = torch.ones_like(vd)
        elif bug == "divides_by_descale":
            qd, kd, vd = (1.0 / d for d in descale)
        elif bug == "first_head_descale":
            qd, kd, vd = (d.flatten()[0] for d in descale)
        q, k, v = dequantize(q, k, v, (qd, kd, vd))  # float32
        if bug == "scores_in_fp8":
            return _scores_in_fp8(q, k, v, **kw)
        if bug in ("p_without_prescale", "p_saturates_at_stale_max"):
            return fa3_p_path(q, k, v, **kw, bug=bug)
        return manual_attention(q, k, v, **kw).to(torch.bfloat16)

    return fn


MUTANTS = [
    Mutant(name, _one_bug(name), bug, features=FEATURES)
    for name, bug in (
        ("drops_descales", "fp8 values used without their descales"),
        ("drops_kv_descale_for_fp8_q", "k and v descales dropped when q is fp8"),
        ("ignores_v_scale", "v's descale never applied"),
        ("divides_by_descale", "x / descale instead of x * descale"),
        ("first_head_descale", "kv head 0's descale used for every head"),
        ("scores_in_fp8", "scores rounded to e4m3 before the softmax"),
        ("p_without_prescale", "P cast to e4m3 from (0, 1], no 2^8 pre-scale"),
        ("p_saturates_at_stale_max", "P pre-scaled against a stale max, saturated at 448"),
    )
]
