"""Process-wide torch state: what a backend call must leave as it found it, and how the suite puts it back.

A kernel that calls `torch.manual_seed` for its dropout mask, sets the default dtype for its accumulators,
switches deterministic algorithms on for its backward or sets the thread count for its own pool changes every
later computation in the process: the user's training run, and the rest of the suite. `global_state` (the
property) fails such a backend, naming each setting it changed; the conformance plugin's autouse fixture
restores the snapshot after every test, so one backend cannot poison the tests that run after it.
"""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import conformance_property, has_backward
from .strategies import Case, cases

AUTOCAST_DEVICES = ("cpu", "cuda")
# The float32 precision of each math backend (TF32, bf16 passes): `torch.set_float32_matmul_precision` and the
# `allow_tf32` flags set these too, and they are read here because torch refuses the old getters once both
# APIs have been used in a process.
FP32_PRECISION = {
    "generic": torch.backends,
    "cuda.matmul": torch.backends.cuda.matmul,
    "cudnn": torch.backends.cudnn,
    "cudnn.conv": torch.backends.cudnn.conv,
    "cudnn.rnn": torch.backends.cudnn.rnn,
    "mkldnn": torch.backends.mkldnn,
    "mkldnn.matmul": torch.backends.mkldnn.matmul,
    "mkldnn.conv": torch.backends.mkldnn.conv,
    "mkldnn.rnn": torch.backends.mkldnn.rnn,
}


def snapshot() -> dict[str, object]:
    """Every process-wide setting a kernel is known to change, by name (RNG states as tensors)."""
    state: dict[str, object] = {
        "default dtype": torch.get_default_dtype(),
        "CPU RNG state": torch.get_rng_state(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic algorithms warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "grad mode": torch.is_grad_enabled(),
        "thread count": torch.get_num_threads(),
        "cuda.matmul.allow_fp16_reduced_precision_reduction": (
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        ),
        "cuda.matmul.allow_bf16_reduced_precision_reduction": (
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        ),
        "cudnn.enabled": torch.backends.cudnn.enabled,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
    }
    for name, backend in FP32_PRECISION.items():
        state[f"{name} fp32_precision"] = backend.fp32_precision
    for device in AUTOCAST_DEVICES:
        state[f"{device} autocast"] = torch.is_autocast_enabled(device)
        state[f"{device} autocast dtype"] = torch.get_autocast_dtype(device)
    if torch.cuda.is_available():
        state["CUDA RNG states"] = torch.cuda.get_rng_state_all()
    return state


def changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """'name: before -> after' for each setting that differs (an RNG state by its contents)."""
    return [
        f"{name}: {_shown(before[name])} -> {_shown(after[name])}"
        for name in before
        if not _same(before[name], after[name])
    ]


def restore(state: dict[str, object]) -> None:
    """Put back the settings of a `snapshot`."""
    torch.set_default_dtype(state["default dtype"])
    torch.set_rng_state(state["CPU RNG state"])
    torch.use_deterministic_algorithms(
        state["deterministic algorithms"], warn_only=state["deterministic algorithms warn_only"]
    )
    torch.set_grad_enabled(state["grad mode"])
    torch.set_num_threads(state["thread count"])
    matmul = torch.backends.cuda.matmul
    matmul.allow_fp16_reduced_precision_reduction = state["cuda.matmul.allow_fp16_reduced_precision_reduction"]
    matmul.allow_bf16_reduced_precision_reduction = state["cuda.matmul.allow_bf16_reduced_precision_reduction"]
    cudnn = torch.backends.cudnn
    cudnn.enabled, cudnn.benchmark = state["cudnn.enabled"], state["cudnn.benchmark"]
    cudnn.deterministic = state["cudnn.deterministic"]
    for name, backend in FP32_PRECISION.items():
        backend.fp32_precision = state[f"{name} fp32_precision"]
    for device in AUTOCAST_DEVICES:
        torch.set_autocast_enabled(device, state[f"{device} autocast"])
        torch.set_autocast_dtype(device, state[f"{device} autocast dtype"])
    if "CUDA RNG states" in state:
        torch.cuda.set_rng_state_all(state["CUDA RNG states"])


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _shown(value) -> str:
    return "(a generator state)" if isinstance(value, (torch.Tensor, list)) else str(value)


@conformance_property(
    "global_state", "global_state", lambda d: cases(d), "default dtype, RNG, threads, flags left as found"
)
def global_state(backend: Backend, case: Case, device: str) -> None:
    """A forward (and backward) call at dropout_p = 0 leaves every setting of `snapshot` as it was, RNG included:
    a call that draws no random numbers must not consume the user's random stream either."""
    q, k, v = (t.requires_grad_(has_backward(backend, device)) for t in case.tensors(device))
    dout = case.upstream(device)
    before = snapshot()
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    if q.requires_grad:
        torch.autograd.grad(out, (q, k, v), dout)
    after = snapshot()
    restore(before)  # the next example, and the next property, start from the caller's state
    if diff := changed(before, after):
        raise AssertionError(
            f"the call changed process-wide torch state: {'; '.join(diff)} [{backend.name} on {device}: {case}]"
        )
