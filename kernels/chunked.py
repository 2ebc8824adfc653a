"""`chunked`: the flash-attention algorithm in plain PyTorch, O(T) memory in forward and backward.

Forward (online softmax). For one query row with scores s_j = scale * q.k_j, softmax attention is
    out = sum_j exp(s_j - m) v_j / sum_j exp(s_j - m)        for any constant m (we want m = max_j s_j).
We visit the keys in blocks and keep, per query row, the running max m, the running denominator
l = sum exp(s_j - m) and the running numerator acc = sum exp(s_j - m) v_j over the keys seen so far.
A new block with scores s_blk gives m' = max(m, max s_blk); the old sums were taken relative to m, so
they are rescaled by alpha = exp(m - m') before the block's terms are added:
    l' = alpha * l + sum_blk exp(s_blk - m'),    acc' = alpha * acc + exp(s_blk - m') @ v_blk.
At the end out = acc / l, and the log-sum-exp lse = m + log(l) is saved: it is all the backward needs.
Only a (Tq, block) slab of scores exists at a time, never the (Tq, Tk) matrix.

Backward (recompute). With P = softmax(S), O = P V and upstream dO:
    dV = P^T dO,    dP = dO V^T,    dS = P * (dP - Dlt),  Dlt_i = sum_j P_ij dP_ij = rowsum(dO * O)_i,
    dQ = scale * dS K,    dK = scale * dS^T Q.
Each key block recomputes its slab P = exp(scale * Q K_blk^T - lse) from the saved lse (exact, no second
max pass), so the backward also holds one (Tq, block) slab at a time.

Vectorization: the Python loop runs over key blocks only; each step handles every query row that can see the
block at once. With causal masking, key block [j0, j1) is seen only by queries at absolute positions >= j0, so
each step slices away the query rows above the block and masks only the rows that cross the diagonal. A sliding
window also drops the rows more than `window` past the block, and document_ids the rows outside the documents
present in it, so whole fully-masked key blocks are skipped and the work grows with the visible pairs (about
T * (block + window) for a window), not with T^2. Rows that see no key of a block (documents, mask_mod) keep a
running max of -inf; their exponentials are taken relative to 0 so nothing becomes NaN, and a row that sees no
key at all outputs 0.

GQA: the Hq // Hkv query heads that read one key/value head are laid out as consecutive rows of that head's
problem, (B * Hkv, Tq * group, D) with row i * group + g, so k and v are never repeated; dk and dv sum over the
group by the same matmul that sums over queries. softcap s -> c * tanh(s / c) is applied to each slab before the
mask, and its derivative 1 - tanh^2 is applied to dS in the backward; a score_mod is applied to the slab too and
differentiated by autograd on the recomputed slab; ALiBi adds a constant bias (no derivative to carry).

Sinks: the sink logit of a row's head is one more term of the denominator with no value, so the loop simply starts
from it: m = sink, l = exp(sink - m) = 1, acc = 0. Its gradient is dsink = sum_i P_sink,i (dlse_i - Dlt_i) with
P_sink,i = exp(sink - lse_i), and a returned lse adds dlse_i to dS: dS = P * (dP - Dlt + dlse). The value head
dim Dv may differ from D (MLA): only acc, out and dv are Dv wide.

Low-precision inputs (fp16/bf16) are computed in fp32 and the output is cast back.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

from .call import FEATURES, AttentionCall
from .contract import NAN_IN_FUTURE_VALUE, NanDeparture
from .dense import default_scale, takes_fp8
from .errors import AttentionInputError
from .layouts import varlen_as_documents
from .registry import register_backend
from .scores import Scores
from .visibility import Visibility

DEFAULT_BLOCK = 128  # keys per step: larger means fewer Python steps, more memory (Tq * block scores)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


@dataclass
class Plan:
    """Which query rows see which key block, and the mask inside a block: the problem's structure, no tensors
    of q, k, v. Query rows and positions are counted per query (not per row of the GQA layout)."""

    tq: int
    tk: int
    batch: int
    hkv: int
    group: int  # query heads per key/value head
    block: int
    visibility: Visibility  # the call's masks: what each query row sees
    scores: Scores  # the call's score transforms (softcap, score_mod, ALiBi in the compute dtype)
    spans: list = field(default_factory=list)  # (j, j0, j1, i0, i1): query rows [i0, i1) see key block [j0, j1)

    def __post_init__(self):
        off = self.tk - self.tq  # query i sits at absolute position off + i
        first = last = None
        if self.visibility.document_ids is not None:
            first, last = _document_extent(self.visibility.document_ids)  # (B, Tk) each
        for j, j0 in enumerate(range(0, self.tk, self.block)):
            j1 = min(j0 + self.block, self.tk)
            i0, i1 = self.visibility.query_rows(j0, j1, self.tq, self.tk)  # causal and the window
            if first is not None:  # only queries inside the documents present in the block
                i0 = max(i0, int(first[:, j0:j1].min()) - off)
                i1 = min(i1, int(last[:, j0:j1].max()) + 1 - off)
            if i0 < i1:
                self.spans.append((j, j0, j1, i0, i1))

    def hidden(self, i0: int, i1: int, j0: int, j1: int, device) -> tuple[int, torch.Tensor | None]:
        """(n, mask): the first n query rows from i0 need `mask`, (B * Hkv or 1, n * group, j1 - j0) bool, True
        where the key is hidden; the other rows see the whole block."""
        off, g = self.tk - self.tq, self.group
        only_causal = self.visibility.positional and self.visibility.window is None
        n = min(i1 - i0, max(0, j1 - 1 - (off + i0))) if only_causal else i1 - i0  # rows crossing the diagonal
        if n == 0 or (only_causal and not self.visibility.causal):
            return 0, None
        pos = torch.arange(off + i0, off + i0 + n, device=device).view(1, 1, n, 1, 1)  # absolute positions
        keys = torch.arange(j0, j1, device=device).view(1, 1, 1, 1, -1)  # (1, 1, 1, 1, bk)
        b = torch.arange(self.batch, device=device).view(-1, 1, 1, 1, 1)
        h = torch.arange(self.hkv * g, device=device).view(1, self.hkv, 1, g, 1)  # query head kv_head * g + i
        vis = self.visibility.sees(b, h, pos, keys)  # (B or 1, Hkv or 1, n, g or 1, bk)
        if vis is None:
            vis = torch.ones(1, 1, 1, 1, 1, dtype=torch.bool, device=device)
        per_item = vis.size(0) > 1 or vis.size(1) > 1
        shape = (self.batch, self.hkv) if per_item else (1, 1)
        return n, ~vis.expand(*shape, n, g, j1 - j0).reshape(-1, n * g, j1 - j0)


def _document_extent(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last): for every key position, the first and last positions of its document, (B, Tk) each."""
    _, doc = torch.unique(document_ids, return_inverse=True)  # (B, Tk) ids renumbered 0 .. n_docs - 1
    b, tk = doc.shape
    pos = torch.arange(tk, device=doc.device).expand(b, tk)
    n = int(doc.max()) + 1
    first = torch.full((b, n), tk, device=doc.device).scatter_reduce(1, doc, pos, "amin")
    last = torch.full((b, n), -1, device=doc.device).scatter_reduce(1, doc, pos, "amax")
    return first.gather(1, doc), last.gather(1, doc)


def _dropout_keep(shape, p: float, seed: int, j: int, device) -> torch.Tensor:
    """Scaled keep-mask for key block j: 1/(1-p) where kept, 0 where dropped; reproducible from (seed, j)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + j)
    keep = torch.rand(shape, generator=g, device=device) >= p
    return keep.to(torch.float32) / (1.0 - p)


def _slab_indices(plan: Plan, i0: int, i1: int, j0: int, j1: int, device) -> tuple[torch.Tensor, ...]:
    """score_mod's index tensors for a slab seen as (B, Hkv, n, group, bk): batch, query head (kv_head * group +
    g), absolute query position, key."""
    g, off = plan.group, plan.tk - plan.tq
    b = torch.arange(plan.batch, device=device).view(-1, 1, 1, 1, 1)
    h = torch.arange(plan.hkv * g, device=device).view(1, plan.hkv, 1, g, 1)
    pos = torch.arange(off + i0, off + i1, device=device).view(1, 1, -1, 1, 1)
    return b, h, pos, torch.arange(j0, j1, device=device).view(1, 1, 1, 1, -1)


def _slab_scores(qs, kb, plan: Plan, i0, i1, j0, j1, need_back: bool = False):
    """Scores of query rows [i0, i1) against key block [j0, j1), transformed (softcap, score_mod, ALiBi) and
    masked: (BHkv, R, bk), plus `back`, which takes dS with respect to them to dS with respect to the raw scores
    (None: the identity), when need_back."""
    g, shape = plan.group, plan.scores
    s = qs[:, i0 * g : i1 * g] @ kb.transpose(1, 2)  # (BHkv, R, bk), R = (i1 - i0) * group
    back = None
    if shape.positional:
        idx = _slab_indices(plan, i0, i1, j0, j1, qs.device)
        as5 = (plan.batch, plan.hkv, i1 - i0, g, j1 - j0)  # the slab as (B, Hkv, n, group, bk)
    if shape.score_mod is not None:
        with torch.enable_grad():
            raw = s.detach().requires_grad_(need_back)
            mod = shape.modded(raw.view(as5), *idx).reshape(s.shape)  # softcap, then score_mod
        if need_back:
            back = lambda ds: torch.autograd.grad(mod, raw, ds)[0]  # noqa: E731
        s = mod.detach().clone()  # masked in place below; `mod` stays as autograd saved it
    elif shape.softcap is not None:  # fused in place, its derivative by hand
        t = s.div_(shape.softcap).tanh_()
        s = t * shape.softcap
        back = lambda ds: ds.mul_(1.0 - t * t)  # noqa: E731  d(c tanh(s / c)) / ds = 1 - tanh^2
    if shape.alibi_slopes is not None:
        s = s.view(as5).add_(shape.alibi(*idx, dtype=s.dtype)).view(s.shape)  # -slope * |p - j|
    n, hidden = plan.hidden(i0, i1, j0, j1, qs.device)
    if hidden is not None:
        s[:, : n * g].masked_fill_(hidden, float("-inf"))
    return s, back


def online_softmax_forward(qs, k3, v3, plan: Plan, dropout_p: float = 0.0, seed: int = 0, sink_rows=None):
    """The forward loop on the (BHkv, Tq * group, D) layout, qs already scaled, v3 (BHkv, Tk, Dv). Returns out
    (BHkv, Tq * group, Dv), the running max m and the denominator den (BHkv, Tq * group); lse = m + log(den).
    sink_rows (BHkv, Tq * group): each row's sink logit, where the loop starts from."""
    bh, rows, _ = qs.shape
    g = plan.group
    m = torch.full((bh, rows), float("-inf"), dtype=qs.dtype, device=qs.device)  # running max
    den = torch.zeros((bh, rows), dtype=qs.dtype, device=qs.device)  # running denominator
    if sink_rows is not None:
        m, den = sink_rows.clone(), torch.ones_like(den)  # the sink's term: exp(sink - m) = 1
    acc = torch.zeros((bh, rows, v3.size(-1)), dtype=qs.dtype, device=qs.device)  # running numerator
    for j, j0, j1, i0, i1 in plan.spans:
        r0, r1 = i0 * g, i1 * g
        s, _ = _slab_scores(qs, k3[:, j0:j1], plan, i0, i1, j0, j1)  # (BHkv, R, bk)
        m_old = m[:, r0:r1]  # (BHkv, R) view
        m_new = torch.maximum(m_old, s.amax(dim=-1))  # -inf only for rows that have seen no key yet
        m_ref = m_new.nan_to_num(neginf=0.0)  # such rows take their exps relative to 0: exp(-inf) = 0, no NaN
        alpha = torch.exp(m_old - m_ref)  # (BHkv, R) rescales what was summed relative to m_old
        p = s.sub_(m_ref[..., None]).exp_()  # (BHkv, R, bk) unnormalized probabilities, in place
        den[:, r0:r1] = den[:, r0:r1] * alpha + p.sum(dim=-1)
        if dropout_p > 0:
            p = p * _dropout_keep(p.shape, dropout_p, seed, j, qs.device).to(p.dtype)
        acc[:, r0:r1] = torch.baddbmm(acc[:, r0:r1] * alpha[..., None], p, v3[:, j0:j1])  # (BHkv, R, D)
        m[:, r0:r1] = m_new
    seen = den > 0  # (BHkv, rows); a row that sees no key outputs 0
    return acc / torch.where(seen, den, 1.0)[..., None], m, den


def log_sum_exp(m: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """m + log(den) per row; +inf for a row that sees no key, so the backward's exp(s - lse) is 0 there."""
    return torch.where(den > 0, m + torch.log(den), float("inf"))


def public_lse(m: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """The contract's lse: m + log(den), -inf for a row that sees no key (and has no sink)."""
    return torch.where(den > 0, m + torch.log(den), float("-inf"))


def sinks_as_rows(sinks: torch.Tensor, b: int, tq: int, hkv: int) -> torch.Tensor:
    """(Hq,) -> (B * Hkv, Tq * group): each row's sink, in the to_rows layout."""
    group = sinks.numel() // hkv
    return sinks.view(1, hkv, 1, group).expand(b, hkv, tq, group).reshape(b * hkv, tq * group)


def to_rows(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """(B, Hq, T, D) -> (B * Hkv, T * group, D): the query heads of one key/value head as consecutive rows."""
    b, hq, t, d = x.shape
    return x.reshape(b, hkv, hq // hkv, t, d).transpose(2, 3).reshape(b * hkv, t * (hq // hkv), d)


def from_rows(x3: torch.Tensor, b: int, hq: int, t: int) -> torch.Tensor:
    """The inverse of to_rows: (B * Hkv, T * group, D) -> (B, Hq, T, D)."""
    hkv, d = x3.size(0) // b, x3.size(-1)
    return x3.reshape(b, hkv, t, hq // hkv, d).transpose(2, 3).reshape(b, hq, t, d)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, plan: Plan, scale: float, dropout_p: float):
        in_dtype, cdt = q.dtype, _compute_dtype(q.dtype)
        b, hq, tq, d = q.shape
        hkv, tk = k.size(1), k.size(-2)
        q3 = to_rows(q, hkv).to(cdt)  # (BHkv, Tq * group, D)
        k3 = k.reshape(b * hkv, tk, d).to(cdt)  # (BHkv, Tk, D)
        v3 = v.reshape(b * hkv, tk, v.size(-1)).to(cdt)  # (BHkv, Tk, Dv)
        sink_rows = None if sinks is None else sinks_as_rows(sinks.to(cdt), b, tq, hkv)  # (BHkv, Tq * group)
        seed = int(torch.randint(0, 2**31 - 1, ())) if dropout_p > 0 else 0
        out, m, den = online_softmax_forward(q3 * scale, k3, v3, plan, dropout_p, seed, sink_rows)
        ctx.save_for_backward(q3, k3, v3, out, log_sum_exp(m, den), sink_rows)  # lse: (BHkv, Tq * group)
        ctx.plan, ctx.scale, ctx.dropout_p, ctx.seed = plan, scale, dropout_p, seed
        ctx.in_dtype, ctx.shapes = in_dtype, (q.shape, k.shape, v.shape)
        ctx.sinks_dtype = None if sinks is None else sinks.dtype
        lse = from_rows(public_lse(m, den)[..., None], b, hq, tq)[..., 0]  # (B, Hq, Tq)
        return from_rows(out, b, hq, tq).to(in_dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q3, k3, v3, out, lse, sink_rows = ctx.saved_tensors
        plan, scale, p_drop = ctx.plan, ctx.scale, ctx.dropout_p
        (b, hq, tq, d), shape_k, shape_v = ctx.shapes
        g = plan.group
        do = to_rows(dout, shape_k[1]).to(q3.dtype)  # (BHkv, Tq * group, Dv)
        delta = (do * out).sum(dim=-1)  # (BHkv, Tq * group) Dlt_i = sum_j P_ij dP_ij
        dlse = to_rows(dlse[..., None], shape_k[1])[..., 0].to(q3.dtype)  # (BHkv, Tq * group)
        delta = delta - dlse  # dS = P * (dP - Dlt + dlse)
        qs = q3 * scale
        dq = torch.zeros_like(q3)
        dk = torch.zeros_like(k3)  # a key block no query sees keeps a zero gradient
        dv = torch.zeros_like(v3)
        for j, j0, j1, i0, i1 in plan.spans:
            r0, r1 = i0 * g, i1 * g
            kb, vb = k3[:, j0:j1], v3[:, j0:j1]  # (BHkv, bk, D)
            s, back = _slab_scores(qs, kb, plan, i0, i1, j0, j1, need_back=True)  # (BHkv, R, bk)
            p = s.sub_(lse[:, r0:r1, None]).exp_()  # (BHkv, R, bk) normalized probabilities, in place
            dp = do[:, r0:r1] @ vb.transpose(1, 2)  # (BHkv, R, bk) gradient w.r.t. the dropped P
            if p_drop > 0:
                keep = _dropout_keep(p.shape, p_drop, ctx.seed, j, q3.device).to(p.dtype)
                dv[:, j0:j1] = (p * keep).transpose(1, 2) @ do[:, r0:r1]  # (BHkv, bk, D)
                dp = dp * keep
            else:
                dv[:, j0:j1] = p.transpose(1, 2) @ do[:, r0:r1]  # (BHkv, bk, D)
            ds = dp.sub_(delta[:, r0:r1, None]).mul_(p)  # (BHkv, R, bk) gradient w.r.t. the shaped scores
            if back is not None:
                ds = back(ds)  # through softcap and score_mod, to the raw scores
            dq[:, r0:r1] += ds @ kb  # (BHkv, R, D); the scale is applied once below
            dk[:, j0:j1] = ds.transpose(1, 2) @ qs[:, r0:r1]  # (BHkv, bk, D) = scale * dS^T Q, summed over the group
        dq = from_rows(dq * scale, b, hq, tq).to(ctx.in_dtype)
        dk, dv = dk.reshape(shape_k).to(ctx.in_dtype), dv.reshape(shape_v).to(ctx.in_dtype)
        dsinks = None
        if sink_rows is not None:  # dsink = sum_i P_sink,i (dlse_i - Dlt_i), over batch, rows and the group
            p_sink = (sink_rows - lse).exp()  # (BHkv, Tq * group)
            dsinks = (-p_sink * delta).view(b, shape_k[1], tq, g).sum((0, 2)).reshape(hq).to(ctx.sinks_dtype)
        return dq, dk, dv, dsinks, None, None, None


def chunked_attention(q, k, v, *, block: int = DEFAULT_BLOCK, **keywords):
    # q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv) -> (B, Hq, Tq, Dv) [, lse (B, Hq, Tq)]
    # keywords: the contract's (call.AttentionCall)
    if not (isinstance(block, int) and block > 0):
        raise AttentionInputError(f"block must be a positive int, got {block!r}")
    call = AttentionCall.of(keywords)
    b, hq, tq, _ = q.shape
    hkv, tk = k.size(1), k.size(-2)
    scores = call.scores
    if scores.alibi_slopes is not None:
        scores = dataclasses.replace(scores, alibi_slopes=scores.alibi_slopes.to(_compute_dtype(q.dtype)))
    plan = Plan(tq, tk, b, hkv, hq // hkv, block, call.visibility, scores)
    out, lse = _ChunkedAttention.apply(q, k, v, call.sinks, plan, default_scale(q, call.scale), call.dropout_p)
    return (out, lse) if call.return_lse else out


register_backend(
    "chunked",
    takes_fp8(chunked_attention),
    "flash-attention algorithm in plain PyTorch: online softmax over key blocks, recomputing backward, O(T) memory",
    features=FEATURES,
    nan_departure=NanDeparture(f"{NAN_IN_FUTURE_VALUE} (within its key block)", spreads={"value"}),
    varlen=functools.partial(varlen_as_documents, chunked_attention),  # a prefill batch in one call (layouts.py)
)
