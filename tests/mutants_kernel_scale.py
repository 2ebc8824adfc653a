"""Bugs real attention kernels shipped at kernel scale, in the backward only, or against the call contract.

Test assets only, never registered (the kill test wraps them in an unregistered attnbench.Backend). Each bug
appears only past some size, only in the backward, or only in what the contract promises beyond the numbers;
each docstring names the real bug it models. Sizes are those of real kernels (128-key tiles, head dim 128,
64 programs), so only the kernel-size examples of the suite can catch the size-dependent ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mutants import Mutant

TILE = 128  # keys per tile in the modelled kernels
SPLIT_KV_MIN_TK = 512  # decode rows at least this long take the split-KV path
MAX_HEAD_DIM = 128  # the largest head dim the modelled kernel has a correct specialisation for
MAX_PROGRAMS = 64  # programs the modelled launch grid covers


def _scores(q, k, scale):
    return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)) if scale is None else scale)  # (B, H, Tq, Tk)


def _formula(q, k, v, causal, scale, keep=None, dropout_p=0.0):
    """The plain formula; `keep` (Tq, Tk) bool replaces the bottom-right causal mask."""
    s = _scores(q, k, scale)
    tq, tk = q.size(-2), k.size(-2)
    if keep is None and causal:
        keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return F.dropout(F.softmax(s, dim=-1), p=dropout_p) @ v  # (B, H, Tq, D); F.dropout is identity at p = 0


class _BackwardBug(torch.autograd.Function):
    """Exact forward; the backward computes the exact gradients and then applies `bug(dq, dk, dv, dout)`."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, bug):
        ctx.save_for_backward(q, k, v)
        ctx.causal, ctx.scale, ctx.bug = causal, scale, bug
        return _formula(q, k, v, causal, scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = _formula(q, k, v, ctx.causal, ctx.scale)
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), ctx.bug.reads(dout))
        return (*ctx.bug(dq, dk, dv), None, None, None)


class _Bug:
    """A backward bug: how the kernel reads dO, and what it does to the gradients it computed."""

    def reads(self, dout):
        return dout

    def __call__(self, dq, dk, dv):
        return dq, dk, dv


class _RaggedTailNaN(_Bug):
    def __call__(self, dq, dk, dv):
        tk = dk.size(-2)
        if tk > TILE and tk % TILE:
            dk, dv = dk.clone(), dv.clone()
            dk[..., tk - tk % TILE :, :] = float("nan")  # the partial last key tile reads padding
        return dq, dk, dv


class _ContiguousDout(_Bug):
    def reads(self, dout):
        strides = torch.empty(dout.shape).stride()  # the strides dO would have if it were contiguous
        return torch.as_strided(dout, dout.shape, strides, dout.storage_offset())


class _Nondeterministic(_Bug):
    def __call__(self, dq, dk, dv):
        # atomic adds in arrival order: the last bits of dq vary from run to run
        return dq + dq * torch.finfo(dq.dtype).eps * torch.randint(0, 2, dq.shape, dtype=dq.dtype), dk, dv


def ragged_tail_nan_backward(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Backward NaN on the ragged last key tile when Tk % 128 != 0: pytorch/pytorch#153799 (FlexAttention NaN in
    the backward when the sequence length is not a multiple of 128), NVIDIA/cudnn-frontend#160 (cuDNN SDPA
    backward NaN for a sequence length that is not a desirable multiple)."""
    return _BackwardBug.apply(q, k, v, causal, scale, _RaggedTailNaN())


def contiguous_dout_assumed(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """The backward reads dO with contiguous strides whatever its layout: Dao-AILab/flash-attention#355
    (incorrect backward for non-contiguous output grads), facebookresearch/xformers#282."""
    return _BackwardBug.apply(q, k, v, causal, scale, _ContiguousDout())


def nondeterministic_dq(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """dq accumulated with atomic adds, undeclared: Dao-AILab/flash-attention#414 (the FA2 backward's dq
    differs between identical runs because of atomic adds)."""
    return _BackwardBug.apply(q, k, v, causal, scale, _Nondeterministic())


def head_dim_256_truncated(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Head dims above 128 score only the first 128 features: flashinfer-ai/flashinfer#1993 (incorrect result
    for head_dim=256), Dao-AILab/flash-attention#1306 (result mismatch with headdim=256)."""
    d = q.size(-1)
    if d <= MAX_HEAD_DIM:
        return _formula(q, k, v, causal, scale, dropout_p=dropout_p)
    s = 1.0 / math.sqrt(d) if scale is None else scale
    return _formula(q[..., :MAX_HEAD_DIM], k[..., :MAX_HEAD_DIM], v, causal, s, dropout_p=dropout_p)


def programs_past_grid_dropped(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Programs past the launch grid never run, so their output stays zero: pytorch/pytorch#142228 (SDPA
    memory-efficient attention with batch * heads past the grid limit), flashinfer-ai/flashinfer#3125 (a launch
    failure past gridDim.z leaves the output unwritten). The limit is scaled down to 64 programs."""
    b, h, tq, d = q.shape
    out = _formula(q, k, v, causal, scale, dropout_p=dropout_p).reshape(
        b * h, tq, d
    )  # (BH, Tq, D), one program per row
    keep = (torch.arange(b * h, device=q.device) < MAX_PROGRAMS).to(out.dtype)[:, None, None]
    return (out * keep).reshape(b, h, tq, d)


def split_kv_unweighted_combine(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Decode (Tq <= 16) against Tk >= 512 splits the keys in two and averages the halves' outputs instead of
    weighting them by their log-sum-exp: the split-KV combine of pytorch/pytorch#194167 (varlen_attn wrong with
    split-KV) and Dao-AILab/flash-attention#719 (kv-cache discrepancy for long sequences)."""
    tq, tk = q.size(-2), k.size(-2)
    if tq > 16 or tk < SPLIT_KV_MIN_TK:
        return _formula(q, k, v, causal, scale, dropout_p=dropout_p)
    keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq) if causal else None
    half = tk // 2
    parts = [_formula(q, k[..., a:b, :], v[..., a:b, :], False, scale, None if keep is None else keep[:, a:b])
             for a, b in ((0, half), (half, tk))]  # fmt: skip
    return (parts[0] + parts[1].nan_to_num(0.0)) / 2  # rows seeing no key of the second half would be NaN there


def causal_tiles_top_left(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """The causal loop bound ignores Tk - Tq: query tile m stops at key tile m, so with Tq < Tk past one tile
    the last visible keys are skipped: NVIDIA/cutlass#2336 (FMHA causal misbehaves when qlen != klen),
    gittensor-ai-lab/sparkinfer#3 (flash_prefill's causal bound misaligned when seqlen_q != seqlen_kv), and the
    two-block masking Dao-AILab/flash-attention#436 had to get right. Here the element mask is right and only
    the tile range is top-left, so it shows only once Tq spans past the first 128-key tile's reach."""
    tq, tk = q.size(-2), k.size(-2)
    if not causal or tq == tk:
        return _formula(q, k, v, causal, scale, dropout_p=dropout_p)
    rows = torch.arange(tq, device=q.device)[:, None]  # (Tq, 1)
    cols = torch.arange(tk, device=q.device)[None, :]  # (1, Tk)
    last_tile_end = (rows // TILE + 1) * TILE  # keys the top-left tile loop visits: < this
    keep = (cols <= rows + tk - tq) & (cols < last_tile_end)
    return _formula(q, k, v, True, scale, keep, dropout_p)


def scales_q_in_place(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Scales q in place (q /= sqrt(D)) to save a copy: pytorch/pytorch#73249 (MHA's in-place division on q,
    reverted: the caller's q is changed)."""
    s = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    with torch.no_grad():
        q.mul_(s)
    return _formula(q, k, v, causal, 1.0, dropout_p=dropout_p)


def fp32_output(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Computes in fp32 and never casts back: facebookresearch/xformers#772 (bf16 input, fp32 output),
    lucidrains/flash-attention-jax#13 and tinygrad/tinygrad#5100 (attention returned float32 whatever came in)."""
    return _formula(q.float(), k.float(), v.float(), causal, scale, dropout_p=dropout_p)


_MASKS: dict[int, torch.Tensor] = {}  # the stale cache: Tk -> the mask of the last call that built one


def stale_mask_cache(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Caches the causal mask per key length and reuses its first rows for a later call with fewer queries: a
    mask built for one query length reused for another, as the BlockMask of pytorch/pytorch#136232 (fixed in
    #137255) and meta-pytorch/attention-gym#34. A call's result depends on the calls before it."""
    tq, tk = q.size(-2), k.size(-2)
    if not causal:
        return _formula(q, k, v, False, scale, dropout_p=dropout_p)
    if tk not in _MASKS or _MASKS[tk].size(0) < tq:
        _MASKS[tk] = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)  # right for this call
    return _formula(q, k, v, True, scale, _MASKS[tk][:tq].to(q.device), dropout_p)  # top rows: stale if Tq shrank


MUTANTS: list[Mutant] = [
    Mutant("ragged_tail_nan_bwd", ragged_tail_nan_backward, "backward NaN on the ragged last 128-key tile"),
    Mutant("contiguous_dout", contiguous_dout_assumed, "backward reads dO as if contiguous"),
    Mutant("nondeterministic_dq", nondeterministic_dq, "dq differs between identical calls, undeclared"),
    Mutant("head_dim_256", head_dim_256_truncated, "head dims > 128 score only 128 features"),
    Mutant("grid_programs", programs_past_grid_dropped, "programs past 64 (B*H) never run: zeros"),
    Mutant("split_kv_combine", split_kv_unweighted_combine, "decode split-KV halves averaged, not lse-weighted"),
    Mutant("causal_tiles_top_left", causal_tiles_top_left, "causal tile range top-left when Tq < Tk"),
    Mutant("scales_q_in_place", scales_q_in_place, "q scaled in place: the caller's q changes"),
    Mutant("fp32_output", fp32_output, "output in fp32 for low-precision inputs"),
    Mutant("stale_mask_cache", stale_mask_cache, "causal mask cached from a longer call, sliced"),
]
