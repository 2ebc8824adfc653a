"""Backends that compute the right numbers but change torch's process-wide state, each the way kernels do.

Test assets only, never registered; `global_state` is the property designed to catch each (KILLED_BY):
- seeds_global_rng: torch.manual_seed in every call, for a reproducible dropout mask (the global generator, not
  a torch.Generator of its own): the user's random stream restarts at every attention call.
- sets_default_dtype: torch.set_default_dtype(torch.float64) for its accumulators, never set back.
- enables_deterministic: torch.use_deterministic_algorithms(True) so that its backward is reproducible: every
  later op in the process is held to it (and nondeterministic ones start to raise).
- pins_one_thread: torch.set_num_threads(1) so that its own thread pool is not oversubscribed, never set back
  (seen wherever the caller runs more than one thread: on every machine with two cores or more).
"""

from __future__ import annotations

import torch
from mutants import Mutant, _attend


def seeds_global_rng(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    torch.manual_seed(0)  # reproducible dropout masks, through the process-wide generator
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


def sets_default_dtype(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    torch.set_default_dtype(torch.float64)  # float64 accumulators by default
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


def enables_deterministic(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    torch.use_deterministic_algorithms(True)  # a reproducible backward, for everyone
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


def pins_one_thread(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    torch.set_num_threads(1)  # its own pool does the parallel work
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


MUTANTS: list[Mutant] = [
    Mutant("seeds_global_rng", seeds_global_rng, "calls torch.manual_seed(0) in every call"),
    Mutant("sets_default_dtype", sets_default_dtype, "sets the default dtype to float64 and leaves it"),
    Mutant("enables_deterministic", enables_deterministic, "turns deterministic algorithms on and leaves them"),
    Mutant("pins_one_thread", pins_one_thread, "sets torch's thread count to 1 and leaves it"),
]
