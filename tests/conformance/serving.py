"""Properties of the serving layouts (attnbench.layouts): ragged batches (varlen) and the paged KV cache.

- varlen_alone: a ragged batch equals each sequence run alone through the backend's dense call, forward and
  gradients (empty sequences give no rows and zero key gradients, padding rows get zero gradients);
- varlen_empty: the same on batches full of empty sequences (Lq = 0, with or without keys), and nothing is NaN;
- varlen_padding: NaN in the padding rows past cu_seqlens[-1] never reaches the output;
- paged_contiguous: attention over the paged cache equals attention over each sequence's contiguous cache,
  forward and gradients (a shared page's gradient sums its sequences', an unread page gets none);
- paged_poison: NaN in the pages no sequence names, in the block-table tails past a sequence's pages (pointing
  at those pages) and in the cache rows past a sequence's length never reaches the output.
A backend is checked through its own layout implementation where it declares one, else through the default.
Kernel-sized draws reach many sequences, long ones, page sizes 1, 16 and 256 and lengths one past a page.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from attnbench import Backend
from attnbench.layouts import attend_paged, attend_varlen, contiguous_cache
from hypothesis import strategies as st

from .core import assert_within, conformance_property, has_backward, two_run_bounds
from .strategies import KERNEL_DTYPE, MODEL_GROUPS, Case, kernel_sizes_enabled

PAGE_SIZES = (1, 16, 256)  # one token a page, the common 16, and the largest page size kernels specialise
MANY_LENGTHS = (0, 1, 2, 17, 63, 64, 65)  # many sequences: empty, one token, around a 64-tile
LONG_LENGTHS = (0, 127, 128, 129, 255, 257, 513, 1025)  # long sequences: one past a tile, and empty beside them


def _randn(g: torch.Generator, shape, magnitude: float, dtype, device) -> torch.Tensor:
    return (torch.randn(shape, generator=g, dtype=torch.float64) * magnitude).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class VarlenCase:
    """A ragged batch: per sequence its query and key lengths (Lq <= Lk), then `pad` padding rows."""

    lengths_q: tuple[int, ...]
    lengths_k: tuple[int, ...]
    hq: int
    hkv: int  # hq % hkv == 0
    D: int
    dtype: torch.dtype
    causal: bool
    magnitude: float  # std of q and k (v has std 1)
    seed: int
    pad: int = 0  # padding rows after the last sequence, in q and in k/v
    scale: float | None = None

    B = property(lambda self: len(self.lengths_q))  # sizes the verdict table reads (properties.case_sizes)
    H = property(lambda self: self.hq)
    Tq = property(lambda self: max(self.lengths_q))
    Tk = property(lambda self: max(self.lengths_k))

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (total_q + pad, Hq, D); k, v: (total_k + pad, Hkv, D)."""
        g = torch.Generator().manual_seed(self.seed)
        rows_q, rows_k = sum(self.lengths_q) + self.pad, sum(self.lengths_k) + self.pad
        q = _randn(g, (rows_q, self.hq, self.D), self.magnitude, self.dtype, device)
        k = _randn(g, (rows_k, self.hkv, self.D), self.magnitude, self.dtype, device)
        return q, k, _randn(g, (rows_k, self.hkv, self.D), 1.0, self.dtype, device)

    def upstream(self, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return _randn(g, (sum(self.lengths_q) + self.pad, self.hq, self.D), 1.0, self.dtype, device)

    def cu_seqlens(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cu_seqlens_q, cu_seqlens_k: int32 (B + 1,)."""
        return tuple(
            torch.tensor((0, *torch.tensor(n).cumsum(0).tolist()), dtype=torch.int32, device=device)
            for n in (self.lengths_q, self.lengths_k)
        )

    def run(self, backend: Backend, q, k, v) -> torch.Tensor:
        cu_q, cu_k = self.cu_seqlens(q.device)
        return attend_varlen(
            q, k, v, cu_q, cu_k, self.Tq, self.Tk, causal=self.causal, scale=self.scale, backend=backend
        )

    def restricted(self, backend: Backend, device: str) -> VarlenCase:
        """Without GQA where the backend does not run it."""
        return replace(self, hkv=self.hq) if backend.why_no_feature("gqa", device) else self


@dataclass(frozen=True)
class PagedCase:
    """The last Tq positions of B sequences over a paged cache. Every sequence starts with `shared` full pages
    holding the same prefix (the same physical pages), then its own pages; `spare` pages are named by no
    sequence, and each block-table row has `tail` more entries than the longest sequence needs."""

    extra: tuple[int, ...]  # per sequence, its tokens after the shared prefix
    tq: int  # <= every sequence's length
    page_size: int
    shared: int  # pages of common prefix
    spare: int
    tail: int
    hq: int
    hkv: int
    D: int
    dtype: torch.dtype
    causal: bool
    magnitude: float
    seed: int
    scale: float | None = None

    B = property(lambda self: len(self.extra))
    H = property(lambda self: self.hq)
    Tq = property(lambda self: self.tq)
    Tk = property(lambda self: max(self.lengths))

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.shared * self.page_size + n for n in self.extra)

    def own_pages(self) -> list[int]:
        return [math.ceil(n / self.page_size) for n in self.extra]

    def contiguous(self, device) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """q: (B, Tq, Hq, D); per sequence its keys and values: (L, Hkv, D), the prefix rows the same in all."""
        g = torch.Generator().manual_seed(self.seed)
        q = _randn(g, (self.B, self.tq, self.hq, self.D), self.magnitude, self.dtype, device)
        kv = []
        for mag in (self.magnitude, 1.0):
            prefix = _randn(g, (self.shared * self.page_size, self.hkv, self.D), mag, self.dtype, device)
            kv.append(
                [torch.cat([prefix, _randn(g, (n, self.hkv, self.D), mag, self.dtype, device)]) for n in self.extra]
            )
        return q, kv[0], kv[1]

    def paged(self, device, poison: bool = False):
        """q, k_cache, v_cache, block_table, cache_seqlens, with the pages in a seeded random order. The rows no
        sequence reads hold finite garbage, or NaN with poison=True; block-table tails name the spare pages."""
        q, ks, vs = self.contiguous(device)
        ps, own = self.page_size, self.own_pages()
        n_pages = self.shared + sum(own) + self.spare
        g = torch.Generator().manual_seed(self.seed + 2)
        physical = torch.randperm(n_pages, generator=g)  # logical page -> physical page
        garbage = float("nan") if poison else 7.0
        caches = [torch.full((n_pages, ps, self.hkv, self.D), garbage, dtype=self.dtype, device=device) for _ in "kv"]
        width = self.shared + max(own) + self.tail
        spare = physical[n_pages - self.spare :] if self.spare else physical[:1]
        table = spare[torch.arange(self.B * width) % len(spare)].reshape(self.B, width).clone()  # tails: spare pages
        first_own = self.shared
        for b, (n_own, k, v) in enumerate(zip(own, ks, vs, strict=True)):
            logical = list(range(self.shared)) + list(range(first_own, first_own + n_own))
            first_own += n_own
            table[b, : len(logical)] = physical[logical]
            for cache, x in zip(caches, (k, v), strict=True):
                rows = torch.arange(len(x))
                cache[physical[logical][rows // ps], rows % ps] = x
        lengths = torch.tensor(self.lengths, dtype=torch.int32, device=device)
        return q, caches[0], caches[1], table.to(device=device, dtype=torch.int32), lengths

    def upstream(self, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return _randn(g, (self.B, self.tq, self.hq, self.D), 1.0, self.dtype, device)  # (B, Tq, Hq, D)

    def run(self, backend: Backend, q, k_cache, v_cache, table, lengths) -> torch.Tensor:
        return attend_paged(q, k_cache, v_cache, table, lengths, causal=self.causal, scale=self.scale, backend=backend)

    def restricted(self, backend: Backend, device: str) -> PagedCase:
        return replace(self, hkv=self.hq) if backend.why_no_feature("gqa", device) else self


# ------------------------------------------------------------------------------------------- strategies


def _heads(draw, big: bool) -> tuple[int, int]:
    """(Hq, Hkv): at kernel sizes the group of a shipped model (MODEL_GROUPS: 1, 2, 4, 7, 8), else 1 to 3."""
    hkv = draw(st.integers(1, 2))
    return hkv * draw(st.sampled_from(MODEL_GROUPS) if big else st.integers(1, 3)), hkv


def _common(draw, dtypes, big: bool) -> dict:
    dtypes = [KERNEL_DTYPE] if big and KERNEL_DTYPE in dtypes else list(dtypes)
    hq, hkv = _heads(draw, big)
    return dict(
        hq=hq,
        hkv=hkv,
        D=draw(st.sampled_from((16, 32, 64))) if big else draw(st.integers(1, 16)),
        dtype=draw(st.sampled_from(dtypes)),
        causal=draw(st.booleans()),
        magnitude=draw(st.sampled_from((0.1, 1.0, 3.0))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _big(draw) -> bool:
    return kernel_sizes_enabled() and draw(st.integers(1, 4)) == 1


@st.composite
def varlen_cases(draw, dtypes, *, empty: bool = False) -> VarlenCase:
    """Toy ragged batches, and one draw in 4 at kernel sizes: many short sequences, or a few long ones.
    empty=True: at least one sequence without queries, and often without keys either; kernel-sized draws are then
    many short sequences."""
    big = _big(draw)
    if big and (empty or draw(st.booleans())):  # batches of empty sequences: many short ones beside them
        n, lengths = draw(st.integers(8, 24)), MANY_LENGTHS
    elif big:
        n, lengths = draw(st.integers(1, 3)), LONG_LENGTHS
    else:
        n, lengths = draw(st.integers(1, 5)), tuple(range(0, 25))
    lk = draw(st.lists(st.sampled_from(lengths), min_size=n, max_size=n))
    prefill = draw(st.integers(0, 2)) == 0  # every Lq = Lk: one cu_seqlens (a packed prefill) one draw in three
    lq = list(lk) if prefill else [draw(st.sampled_from([t for t in (0, 1, k) if t <= k])) for k in lk]
    if empty:
        at = draw(st.integers(0, n))
        lq.insert(at, 0)
        lk.insert(at, draw(st.sampled_from((0, 0, 1, 3))))
    return VarlenCase(tuple(lq), tuple(lk), pad=draw(st.integers(0, 3)), **_common(draw, dtypes, big))


@st.composite
def paged_cases(draw, dtypes) -> PagedCase:
    """Toy caches, and one draw in 4 at kernel sizes: page sizes 1, 16 and 256, many sequences in decode or long
    ones, lengths one past a page boundary."""
    big = _big(draw)
    page_size = draw(st.sampled_from(PAGE_SIZES)) if big else draw(st.integers(1, 8))
    n = draw(st.integers(8, 32)) if big and page_size < 256 else draw(st.integers(1, 4))
    shared = draw(st.integers(0, 2 if page_size < 256 else 1))
    per_seq = st.one_of(st.integers(1, 3 * page_size), st.integers(0, 3).map(lambda p: p * page_size + 1))
    extra = draw(st.lists(per_seq, min_size=n, max_size=n))
    shortest = min(extra) + shared * page_size
    tq = draw(st.sampled_from(sorted({1, min(shortest, 5), shortest})))
    return PagedCase(
        tuple(extra),
        tq,
        page_size,
        shared,
        spare=draw(st.integers(0, 2)),
        tail=draw(st.integers(0, 2)),
        **_common(draw, dtypes, big),
    )


def _varlen_examples(dtype: torch.dtype) -> list[VarlenCase]:
    base = dict(dtype=dtype, magnitude=1.0, seed=4321, causal=True)
    many_q = tuple([0, 1, 17, 65, 0, 64] * 4)  # 24 sequences: empty ones, one token, a 64-tile and one past it
    many_k = tuple([0, 3, 17, 65, 2, 127] * 4)
    return [
        VarlenCase((1, 0, 129, 65, 1025), (1025, 0, 129, 128, 1025), hq=2, hkv=1, D=64, pad=2, **base),
        VarlenCase(many_q, many_k, hq=4, hkv=2, D=16, **{**base, "causal": False}),
        VarlenCase((129, 0, 64, 1, 257), (129, 0, 64, 1, 257), hq=4, hkv=2, D=32, pad=1, **base),  # a prefill
    ]


def _empty_examples(dtype: torch.dtype) -> list[VarlenCase]:
    """Empty sequences first, last, in a row, with keys and without, beside a 64-tile and one past it."""
    base = dict(dtype=dtype, magnitude=1.0, seed=77, causal=True, hq=4, hkv=2, D=64, pad=1)
    return [VarlenCase((0, 0, 64, 1, 0, 65, 0), (0, 5, 64, 1, 0, 65, 3), **base)]


def _paged_examples(dtype: torch.dtype) -> list[PagedCase]:
    base = dict(dtype=dtype, magnitude=1.0, seed=99, causal=True, hq=4, hkv=2, D=32, spare=1, tail=1)
    return [
        PagedCase((1, 257, 255), tq=1, page_size=256, shared=1, **base),  # 256-token pages, one past a page
        PagedCase((1, 17, 65), tq=4, page_size=1, shared=3, **base),  # one token a page, chunked prefill
        PagedCase(tuple(16 * (i % 4) + 1 for i in range(33)), tq=1, page_size=16, shared=2, **base),  # 33 decodes
    ]


# ------------------------------------------------------------------------------------------- properties


def _leaves(backend: Backend, device: str, *ts):
    return [t.detach().requires_grad_(has_backward(backend, device)) for t in ts]


def _ctx(backend: Backend, device: str, case) -> str:
    return f"[{backend.name} on {device}: {case}]"


def _assert_close(name: str, got, want, bounds: Callable[[], dict[str, float]], ctx: str) -> None:
    """got (out, dq, dk or dv: `name`'s first word) is within its bound of want; the bounds (_alone_bounds) are
    computed only where the two differ at all: the defaults repeat the dense call exactly, and the bounds cost
    float64 matmuls per sequence."""
    if not torch.equal(got, want):
        assert_within(f"{name} vs the sequence run alone", got, want, bounds()[name.split()[0]], ctx)


def _alone_bounds(case, q, k, v, dout, lq: int, lk: int) -> dict[str, float]:
    """two_run_bounds for one sequence (q: (1, Hq, Lq, D), k/v (1, Hkv, Lk, D)), dk/dv summed over a group."""
    group = q.size(1) // k.size(1)
    seq = Case(1, q.size(1), lq, lk, q.size(-1), case.dtype, case.causal, case.magnitude, "contiguous", 0, case.scale)
    k, v = (t.detach().repeat_interleave(group, 1) for t in (k, v))  # (1, Hq, Lk, D)
    bounds = two_run_bounds(seq, q.detach(), k, v, dout)
    return {**bounds, "dk": group * bounds["dk"], "dv": group * bounds["dv"]}


def _grads(out, inputs, dout) -> tuple[torch.Tensor, ...]:
    """d(out . dout)/d(inputs); zeros where nothing depends on an input (a batch without a query row)."""
    if not out.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    return torch.autograd.grad(out, inputs, dout, allow_unused=True, materialize_grads=True)


@conformance_property(
    "varlen_alone",
    "serving",
    lambda d: varlen_cases(d),
    "ragged batch = each sequence alone",
    examples=_varlen_examples,
)
@conformance_property(
    "varlen_empty",
    "serving",
    lambda d: varlen_cases(d, empty=True),
    "empty sequences: no rows, no key gradient, no NaN elsewhere",
    examples=_empty_examples,
)
def varlen_alone(backend: Backend, case: VarlenCase, device: str) -> None:
    """Each sequence of the batch, out and grads, equals it run alone through the backend's dense call."""
    case = case.restricted(backend, device)
    q, k, v = _leaves(backend, device, *case.tensors(device))
    dout = case.upstream(device)
    out = case.run(backend, q, k, v)
    grads = _grads(out, (q, k, v), dout) if q.requires_grad else None
    if not torch.isfinite(out[: sum(case.lengths_q)]).all():
        raise AssertionError(f"varlen output has non-finite rows {_ctx(backend, device, case)}")
    (cu_q, cu_k), ctx = case.cu_seqlens("cpu"), _ctx(backend, device, case)
    for b, (lq, lk) in enumerate(zip(case.lengths_q, case.lengths_k, strict=True)):
        rows_q, rows_k = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if lq == 0:  # no output rows; its keys and values get no gradient
            if grads is not None and (grads[1][rows_k].any() or grads[2][rows_k].any()):
                raise AssertionError(f"sequence {b} has no queries but its keys get a gradient {ctx}")
            continue
        alone = _leaves(
            backend, device, *(t[r].transpose(0, 1)[None] for t, r in ((q, rows_q), (k, rows_k), (v, rows_k)))
        )
        dout_b = dout[rows_q].transpose(0, 1)[None]  # (1, Hq, Lq, D)
        want = backend(*alone, causal=case.causal, scale=case.scale)  # (1, Hq, Lq, D)
        bounds = functools.cache(functools.partial(_alone_bounds, case, *alone, dout_b, lq, lk))
        _assert_close(f"out of sequence {b}", out[rows_q], want[0].transpose(0, 1), bounds, ctx)
        if grads is None:
            continue
        want_grads = torch.autograd.grad(want, alone, dout_b)
        for name, g, w, rows in zip(("dq", "dk", "dv"), grads, want_grads, (rows_q, rows_k, rows_k), strict=True):
            _assert_close(f"{name} of sequence {b}", g[rows], w[0].transpose(0, 1), bounds, ctx)
    if grads is not None and any(g[n:].any() for g, n in zip(grads, (cu_q[-1], cu_k[-1], cu_k[-1]), strict=True)):
        raise AssertionError(f"padding rows got a gradient {ctx}")


@conformance_property(
    "varlen_padding", "serving", lambda d: varlen_cases(d), "NaN padding rows never read", examples=_varlen_examples
)
def varlen_padding(backend: Backend, case: VarlenCase, device: str) -> None:
    """NaN in the padding rows (past cu_seqlens[-1]) of q, k and v leaves every real output row as it was."""
    case = replace(case.restricted(backend, device), pad=max(case.pad, 1))
    clean = case.tensors(device)
    poisoned = [t.clone() for t in clean]
    for t, n in zip(poisoned, (sum(case.lengths_q), sum(case.lengths_k), sum(case.lengths_k)), strict=True):
        t[n:] = float("nan")
    with torch.no_grad():
        want, got = (case.run(backend, *ts)[: sum(case.lengths_q)] for ts in (clean, poisoned))
    if not torch.equal(got, want):
        raise AssertionError(f"NaN padding rows changed the output {_ctx(backend, device, case)}")


@conformance_property(
    "paged_contiguous",
    "serving",
    lambda d: paged_cases(d),
    "paged = contiguous cache, forward and gradients",
    examples=_paged_examples,
)
def paged_contiguous(backend: Backend, case: PagedCase, device: str) -> None:
    """The paged cache gives what each sequence's contiguous cache gives through the backend's dense call, out and
    gradients: dq per sequence, and the cache gradients as each sequence's scattered back to its pages (a page of
    the shared prefix sums them over the sequences; a page or row no sequence reads gets none)."""
    case = case.restricted(backend, device)
    q, k_cache, v_cache, table, lengths = case.paged(device)
    q, k_cache, v_cache = _leaves(backend, device, q, k_cache, v_cache)
    dout, ctx = case.upstream(device), _ctx(backend, device, case)
    out = case.run(backend, q, k_cache, v_cache, table, lengths)  # (B, Tq, Hq, D)
    grads = _grads(out, (q, k_cache, v_cache), dout) if q.requires_grad else None
    want_grads, sequence_bounds = [torch.zeros_like(t) for t in (q, k_cache, v_cache)], []
    for b, length in enumerate(case.lengths):
        k, v = (contiguous_cache(c, table[b], length) for c in (k_cache, v_cache))  # (L, Hkv, D), from the leaves
        dense = [t.transpose(0, 1)[None] for t in (q[b], k, v)]  # (1, H, T, D)
        dout_b = dout[b].transpose(0, 1)[None]  # (1, Hq, Tq, D)
        want = backend(*dense, causal=case.causal, scale=case.scale)  # (1, Hq, Tq, D)
        detached = [t.detach() for t in dense]
        bounds = functools.cache(functools.partial(_alone_bounds, case, *detached, dout_b, case.tq, length))
        _assert_close(f"out of sequence {b}", out[b], want[0].transpose(0, 1), bounds, ctx)
        if grads is not None:
            for total, g in zip(want_grads, _grads(want, (q, k_cache, v_cache), dout_b), strict=True):
                total += g  # autograd's gather backward scatters a sequence's dk, dv into its pages
            _assert_close(f"dq of sequence {b}", grads[0][b], want_grads[0][b], bounds, ctx)
            sequence_bounds.append(bounds)
    if grads is not None:  # a shared page sums every sequence's gradient: within the sum of their bounds
        summed = functools.cache(lambda: {n: sum(bs()[n] for bs in sequence_bounds) for n in ("dk", "dv")})
        _assert_close("dk of the k cache", grads[1], want_grads[1], summed, ctx)
        _assert_close("dv of the v cache", grads[2], want_grads[2], summed, ctx)


@conformance_property(
    "paged_poison",
    "serving",
    lambda d: paged_cases(d),
    "NaN in unread pages and rows never read",
    examples=_paged_examples,
)
def paged_poison(backend: Backend, case: PagedCase, device: str) -> None:
    """NaN in the spare pages, the block-table tails that name them and the rows past each sequence's length
    leaves the output as it was with finite garbage there."""
    case = replace(case.restricted(backend, device), spare=max(case.spare, 1), tail=max(case.tail, 1))
    with torch.no_grad():
        want, got = (case.run(backend, *case.paged(device, poison=p)) for p in (False, True))
    if not (torch.isfinite(got).all() and torch.equal(got, want)):
        raise AssertionError(f"a row no sequence owns reached the output {_ctx(backend, device, case)}")
