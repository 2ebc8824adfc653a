"""Determinism beyond two identical calls: what inference engines and CUDA graphs rely on.

- batch_invariance (bitwise, for a backend that declares `Backend.batch_invariant`): a row's output does not
  depend on the batch size, its place in the batch, or the query rows computed beside it (the last rows of a
  query block run alone against the same keys: a decode step after a prefill). Batch-invariant inference
  (Dao-AILab/flash-attention#1897, flashinfer-ai/flashinfer PR #1675, sgl-project/sglang PR #10417) needs it; a
  split-KV heuristic that picks its splits by the batch size breaks it. No registered backend declares it: on
  this CPU every one of them changes the last bits of some row with the batch size or the query count (PyTorch's
  and ONNX Runtime's matmuls pick their kernel by the matrix sizes; measured on 60 random shapes).
- repeatable: hundreds of identical calls at batch 60 are bit-identical to the first, forward and backward (the
  repetition flash-attention's determinism tests run, on sizes cheap on a CPU); a race between atomic adds shows
  on some calls, not on every second one. Skipped for a backend declaring `nondeterministic = True`.
- cuda_graph_replay: a graph captured on one set of inputs and document layout (the lengths a varlen kernel
  takes as metadata) into a memory pool poisoned with NaN (and its output poisoned too), replayed on other
  values and layout copied into the same buffers,
  matches float64 by the pass rule (Dao-AILab/flash-attention#1164, facebookresearch/xformers#968: metadata
  read at capture time, outputs written only in part). CUDA only; on CPU it skips with the reason.
"""

from __future__ import annotations

import torch
from attnbench import Backend
from attnbench.bench.measuring.timers import cuda_graph

from .contract import NAMES, _bit_identical
from .core import conformance_property, has_backward, rule_dtype
from .masked_reference import Features, masked_attention_formula
from .reference import abs_logit_bound, check_rule, rounding_noise
from .strategies import Case, cases

REPEATS = 200  # calls compared with the first
REPEAT_BATCH = 60  # flash-attention's determinism tests run batch 60


def _ctx(backend: Backend, case: Case, device: str) -> str:
    return f"[{backend.name} on {device}: {case}]"


def _not_declared_invariant(backend: Backend, device: str) -> str | None:
    return None if backend.batch_invariant else f"{backend.name} does not declare batch_invariant"


def _repeat_cases(dtypes):
    return cases(dtypes, max_t=8, max_h=2, max_d=8, kernel=False).map(lambda c: c.with_(B=REPEAT_BATCH))


def _repeat_examples(dtype: torch.dtype) -> list[Case]:
    base = dict(dtype=dtype, magnitude=1.0, seed=7, layout="bthd")
    return [Case(B=REPEAT_BATCH, H=2, Tq=5, Tk=8, D=8, causal=True, **base)]


@conformance_property(
    "batch_invariance",
    "determinism",
    lambda d: cases(d).map(lambda c: c.with_(B=c.B + 1)),
    "a row is bit-identical whatever its batch, place in it and neighbouring queries",
    applies=_not_declared_invariant,
)
def batch_invariance(backend: Backend, case: Case, device: str) -> None:
    """Each batch element alone, the batch reversed, and the last query rows alone: bit-identical rows."""
    q, k, v = case.tensors(device)
    kw = dict(causal=case.causal, scale=case.scale)
    full = backend(q, k, v, **kw)  # (B, H, Tq, D)
    ctx = _ctx(backend, case, device)
    for b in range(case.B):
        alone = backend(q[b : b + 1], k[b : b + 1], v[b : b + 1], **kw)  # (1, H, Tq, D)
        _bit_identical(f"batch element {b} run alone differs", (full[b : b + 1],), (alone,), ("out",), ctx)
    flip = torch.arange(case.B - 1, -1, -1, device=full.device)
    reversed_out = backend(q[flip], k[flip], v[flip], **kw)
    _bit_identical("the batch reversed differs", (full[flip],), (reversed_out,), ("out",), ctx)
    for first in sorted({case.Tq // 2, case.Tq - 1} - {0}):
        tail = backend(q[:, :, first:], k, v, **kw)  # (B, H, Tq - first, D): the same keys, fewer queries
        _bit_identical(f"query rows {first}.. run alone differ", (full[:, :, first:],), (tail,), ("out",), ctx)


def _not_deterministic(backend: Backend, device: str) -> str | None:
    return f"{backend.name} declares nondeterministic" if getattr(backend, "nondeterministic", False) else None


def _run(backend: Backend, case: Case, q, k, v, dout) -> tuple[torch.Tensor, ...]:
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout)) if q.requires_grad else (out,)


@conformance_property(
    "repeatable",
    "determinism",
    _repeat_cases,
    f"{REPEATS} calls at batch {REPEAT_BATCH}: bit-identical to the first",
    examples=_repeat_examples,
    applies=_not_deterministic,
)
def repeatable(backend: Backend, case: Case, device: str) -> None:
    """REPEATS identical calls, forward and backward: each bit-identical to the first."""
    q, k, v = (t.requires_grad_(has_backward(backend, device)) for t in case.tensors(device))
    dout = case.upstream(device)
    first = _run(backend, case, q, k, v, dout)
    for i in range(1, REPEATS):
        again = _run(backend, case, q, k, v, dout)
        _bit_identical(f"call {i} differs from call 0", first, again, NAMES, _ctx(backend, case, device))


def _needs_cuda(backend: Backend, device: str) -> str | None:
    return None if torch.device(device).type == "cuda" else f"CUDA-graph capture needs a CUDA device, not {device}"


def _graph_features(backend: Backend, case: Case, device: str) -> tuple[Features, Features]:
    """Capture-time and replay-time metadata: one document, then two (where the backend takes document_ids)."""
    if backend.why_no_feature("document_ids", device):
        return Features(), Features()
    one = torch.zeros(case.B, case.Tk, dtype=torch.int64, device=device)  # (B, Tk)
    two = (torch.arange(case.Tk, device=device) >= case.Tk // 2).long().expand(case.B, -1).contiguous()  # (B, Tk)
    return Features(document_ids=one), Features(document_ids=two)


def _poisoned_pool(case: Case, device: str):
    """(pool, poison): a graph pool holding a freed block the size of a few score matrices, and the graph that
    fills it with NaN. A graph captured into the pool afterwards reuses that memory for its output and
    intermediates; replaying `poison` first leaves NaN wherever the next replay reads before it writes."""
    pool, poison = torch.cuda.graph_pool_handle(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(poison, pool=pool):
        block = torch.full(
            (4 * case.B * case.H * case.Tq * (case.Tk + case.D),), float("nan"), dtype=case.dtype, device=device
        )
        del block  # freed into the pool, NaN at every replay of `poison`
    return pool, poison


@conformance_property(
    "cuda_graph_replay",
    "determinism",
    lambda d: cases(d, kernel=False),
    "a captured graph replayed on new inputs and metadata, output poisoned: float64 by the pass rule",
    applies=_needs_cuda,
)
def cuda_graph_replay(backend: Backend, case: Case, device: str):
    """Capture on case's inputs into a poisoned pool, replay on another seed's inputs and metadata: the pass rule
    against float64."""
    capture_f, replay_f = _graph_features(backend, case, device)
    static = [t.clone() for t in case.tensors(device)]  # q, k, v: the buffers the graph reads
    meta = capture_f.kwargs()  # document_ids: the metadata buffer the graph reads
    pool, poison = _poisoned_pool(case, device)
    replay, out = cuda_graph(lambda: backend(*static, causal=case.causal, scale=case.scale, **meta), device, pool)
    new = case.with_(seed=case.seed + 1).tensors(device)
    for buffer, value in zip(static, new, strict=True):
        buffer.copy_(value)
    for name, value in replay_f.kwargs().items():
        meta[name].copy_(value)
    poison.replay()
    out.fill_(float("nan"))  # a replay that leaves any element unwritten fails the rule
    replay()
    torch.cuda.synchronize(device)
    q, k, v = new
    ref = masked_attention_formula(q.double(), k.double(), v.double(), causal=case.causal, scale=case.scale, f=replay_f)
    d = rule_dtype(case.dtype)
    naive = masked_attention_formula(q.to(d), k.to(d), v.to(d), causal=case.causal, scale=case.scale, f=replay_f)
    atol = rounding_noise(d, float(v.abs().max()), abs_logit_bound(q, k, case.scale), n_terms=case.Tk)
    return check_rule("out", out, ref, naive, atol, f"(replayed) {_ctx(backend, case, device)}")
