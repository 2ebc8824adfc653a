"""Which attention backends and devices a test run covers: the one helper every test file parametrizes with.

    from .backends import backend_params, device_params, supported_dtypes

    @pytest.mark.parametrize("device", device_params())
    @pytest.mark.parametrize("backend", backend_params())   # ids are the backend names
    def test_something(backend, device):
        dtypes = supported_dtypes(backend, device)           # skips with the backend's reason if none
        ...

By default every registered backend (attnbench.all_backends(), entry-point plug-ins included) is covered, but
those in OWN_RUN: `jax_dpa`, where XLA compiles every new shape (3-7 s each on 2 busy cores, ~20 minutes for the
suite), and `hf_flex`, where torch.compile does (0.4-0.5 s each), run in steps of their own (`--backend NAME`, in
.ci/run) so that the default run stays fast.
`pytest --backend NAME[,NAME...]` (repeatable) narrows the run to those registered names; a value of the
form `package.module:function` is imported and covered too; `all` stands for every registered backend
(so `--backend all,mypkg.attn:fn` adds a plug-in to the full set). tests/conftest.py calls `configure`.
"""

from __future__ import annotations

import attnbench
import pytest
import torch
from attnbench import Backend

_requested: list[str] | None = None  # the --backend values, None when not given
OWN_RUN = ("jax_dpa", "hf_flex")  # left out of the default selection (named, or with `all`, they are covered)


def configure(values: list[str] | None) -> None:
    """Record the --backend values (each may be comma-separated); raise pytest.UsageError for unknown names."""
    global _requested
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    _requested = names or None
    if _requested:
        selected_backends()  # fail at startup, not at collection of the first test file


def selected_backends() -> list[Backend]:
    if _requested is None:
        return [b for b in attnbench.all_backends() if b.name not in OWN_RUN]
    out: dict[str, Backend] = {}
    for name in _requested:
        if name == "all":
            out.update((b.name, b) for b in attnbench.all_backends())
            continue
        try:
            backend = attnbench.get_backend(name)  # registered name or 'package.module:function'
        except attnbench.UnknownBackendError as e:
            raise pytest.UsageError(f"--backend: {e}") from e
        out[backend.name] = backend
    return list(out.values())


def backend_params() -> list:
    """pytest.param per selected backend, id = its name."""
    return [pytest.param(b, id=b.name) for b in selected_backends()]


def device_params() -> list:
    """cpu always; cuda when available (skipped with a reason otherwise)."""
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=no_cuda)]


def candidate_dtypes(device: str) -> list[torch.dtype]:
    """fp32, fp64, bf16 everywhere; fp16 too on CUDA (CPU half matmuls are slow and rarely the target)."""
    base = [torch.float32, torch.float64, torch.bfloat16]
    return base + [torch.float16] if torch.device(device).type == "cuda" else base


def supported_dtypes(backend: Backend, device: str, dtypes=None) -> list[torch.dtype]:
    """The dtypes (of `dtypes`, default candidate_dtypes) the backend runs; skip the test if none, with why."""
    dtypes = candidate_dtypes(device) if dtypes is None else dtypes
    ok = [d for d in dtypes if backend.supports(device, d)]
    if not ok:
        reasons = "; ".join(f"{d}: {backend.why_unsupported(device, d)}" for d in dtypes)
        pytest.skip(f"{backend.name} does not run on {device} here ({reasons})")
    return ok


def set_model_backend(model, backend: Backend):
    """Point every attention layer of a GPT at `backend` (a Backend object, registered or not)."""
    for block in model.blocks:
        block.attn.backend = backend
    return model
