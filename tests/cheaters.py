"""Cheating attention backends, each a trick benchmarked kernels have been caught at: the integrity layer of the
op benchmark (attnbench.bench.measuring.integrity) must reject every one. Test assets only, never registered.

All compute the right answer the first time (with `manual`), then cheat on later calls.
"""

from __future__ import annotations

import torch
from attnbench import Backend, get_backend

manual = get_backend("manual").fn


def _returned(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A cached result handed back as if new: backward runs through it, but reaches no input."""
    return out.detach().requires_grad_(torch.is_grad_enabled() and q.requires_grad)


def memoize_by_pointer() -> Backend:
    """Remembers the output per input address: a benchmark that reuses its input tensors gets it for free."""
    cache: dict[tuple, torch.Tensor] = {}

    def attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), q.shape, k.shape, causal, scale)
        if key not in cache:
            cache[key] = manual(q, k, v, causal=causal, scale=scale).detach()
        return _returned(cache[key], q)

    return Backend("memoize_by_pointer", attend, "caches its output by input pointer")


def early_return_on_repeat() -> Backend:
    """Computes once per shape, then returns the last output: every repeated call skips the work."""
    last: dict[tuple, torch.Tensor] = {}

    def attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        key = (q.shape, k.shape, q.dtype, q.device)
        if key not in last:
            last[key] = manual(q, k, v, causal=causal, scale=scale).detach()
        return _returned(last[key], q)

    return Backend("early_return_on_repeat", attend, "returns early on a repeated shape")


def memoize_by_content() -> Backend:
    """Caches by a cheap fingerprint of the values: right on every input, fresh ones included, but a repeated
    input costs three sums instead of attention (only the impossible-time rule can see it)."""
    cache: dict[tuple, torch.Tensor] = {}

    def attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        key = (q.shape, k.shape, float(q.sum()), float(k.sum()), float(v.sum()), causal, scale)
        if key not in cache:
            cache[key] = manual(q, k, v, causal=causal, scale=scale).detach()
        return _returned(cache[key], q)

    return Backend("memoize_by_content", attend, "caches its output by a fingerprint of the inputs")


def side_stream() -> Backend:
    """Computes on a CUDA side stream and returns at once: the current stream never waits for the work, so
    events recorded on it time only the launch."""
    streams: dict[torch.device, torch.cuda.Stream] = {}

    def attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        stream = streams.setdefault(q.device, torch.cuda.Stream(q.device))
        with torch.cuda.stream(stream):
            return manual(q, k, v, causal=causal, scale=scale)

    return Backend("side_stream", attend, "computes on a side stream the caller never waits for")
