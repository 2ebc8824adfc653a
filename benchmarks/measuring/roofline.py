"""The roofline of an attention call: its FLOPs and minimum bytes moved, the machine's two roofs, and which binds.

A call cannot finish faster than max(FLOPs / matmul peak, bytes / memory bandwidth). Which term is larger is
the row's bound: arithmetic intensity (FLOPs per byte) above the ridge point (peak / bandwidth) is compute
bound, below it memory bound. Decode (one query row against a long cache) sits far below the ridge.

FLOPs count the causal, bottom-right aligned work: query i of Tq sees Tk - Tq + i + 1 keys, taken as
Tq * Tk - Tq^2 / 2 pairs (T^2 / 2 for Tq = Tk, the benchmarks' convention; Tk - 1/2 for one query), and each
visible pair costs 4 * D FLOPs forward (two multiply-adds per feature), 2.5 times that backward.

Minimum bytes are each tensor read or written once: forward q, k, v in and out back; backward on top dO in
and dq, dk, dv out (q: (B, H, Tq, D); k, v: (B, H, Tk, D)). Any kernel moves at least these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from attnbench import Visibility

from .measure import synchronize, time_call

# relative to the causal forward: the backward does five matmuls of the forward's size instead of two
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def visible_pairs(Tq: int, Tk: int) -> float:
    """(query, key) pairs a bottom-right causal mask lets through, in the continuous count Tq*Tk - Tq^2/2."""
    if not 0 < Tq <= Tk:
        raise ValueError(f"need 0 < Tq <= Tk, got Tq={Tq}, Tk={Tk}")
    return Tq * Tk - Tq * Tq / 2


def attention_flops(B: int, H: int, Tq: int, Tk: int, D: int, mode: str = "fwd") -> float:
    """FLOPs of causal attention: 4 * D per visible pair forward; backward 2.5x, fwd+bwd 3.5x."""
    return pairs_flops(B * H * visible_pairs(Tq, Tk), D, mode)


def mask_visible_pairs(
    B: int, H: int, Tq: int, Tk: int, *, causal: bool = True, window=None, document_ids=None, mask_mod=None
) -> int:
    """(query, key) pairs the mask lets attend, summed over batch and (query) heads: the work attention must do
    (attnbench.Visibility: causal and window in closed form, documents and mask_mod from the mask itself)."""
    ids = None if document_ids is None else document_ids.cpu()
    return Visibility(causal, window, mask_mod, ids).visible_pairs(B, H, Tq, Tk)


def pairs_flops(pairs: int, D: int, mode: str = "fwd") -> float:
    """FLOPs of attention over `pairs` visible (query, key) pairs (mask_visible_pairs): two D-long multiply-adds per
    pair forward (q.k and p.v), 2 FLOP each; backward 2.5x; fwd+bwd 3.5x. Masked-out pairs count for nothing, so
    FLOP/s and the fraction of peak stay true for sparse masks (windows, documents)."""
    if mode not in FLOP_FACTOR:
        raise ValueError(f"mode must be one of {sorted(FLOP_FACTOR)}, got {mode!r}")
    return FLOP_FACTOR[mode] * 4 * D * pairs


def attention_bytes(B: int, H: int, Tq: int, Tk: int, D: int, dtype: torch.dtype, mode: str = "fwd") -> int:
    """Minimum bytes moved: q, k, v, out forward; plus dO, dq, dk, dv for fwd+bwd (each once)."""
    rows = {"fwd": 2 * Tq + 2 * Tk, "fwd+bwd": 4 * Tq + 4 * Tk}  # q, out (+ dO, dq) of Tq rows; k, v (+ dk, dv)
    if mode not in rows:
        raise ValueError(f"mode must be one of {sorted(rows)}, got {mode!r}")
    return B * H * D * rows[mode] * torch.empty((), dtype=dtype).element_size()


def copy_bandwidth_bytes_per_s(device: torch.device | str, nbytes: int | None = None, reps: int = 5) -> float:
    """The machine's memory bandwidth: best of `reps` timed copies of a buffer far larger than any cache,
    counted as read + write (2 * nbytes per copy), after one warm-up copy."""
    device = torch.device(device)
    if nbytes is None:  # 8x a CPU's L3 and 16x an H100's L2: the copy streams through memory
        nbytes = 2**30 if device.type == "cuda" else 256 * 2**20
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    time_call(lambda: dst.copy_(src), device)
    best = min(time_call(lambda: dst.copy_(src), device) for _ in range(reps))
    synchronize(device)
    return 2 * nbytes / best


@dataclass(frozen=True)
class Roofline:
    flops: float
    bytes_moved: int
    peak_flop_per_s: float  # the measured matmul peak
    bandwidth_bytes_per_s: float  # the measured copy bandwidth
    arithmetic_intensity: float  # FLOPs per byte moved
    ridge_point: float  # peak / bandwidth: the intensity where the two roofs meet
    bound: str  # "compute" or "memory": the roof that limits this call
    compute_min_s: float  # flops / peak
    memory_min_s: float  # bytes / bandwidth
    roofline_min_s: float  # the larger of the two: no call of this size can be faster

    def as_row(self) -> dict:
        return asdict(self)


def roofline(flops: float, bytes_moved: int, peak_flop_per_s: float, bandwidth_bytes_per_s: float) -> Roofline:
    """Where a call of `flops` moving `bytes_moved` sits against the two measured roofs."""
    if peak_flop_per_s <= 0 or bandwidth_bytes_per_s <= 0 or bytes_moved <= 0:
        raise ValueError(
            f"roofline needs positive peak, bandwidth and bytes, got {peak_flop_per_s}, "
            f"{bandwidth_bytes_per_s}, {bytes_moved}"
        )
    intensity, ridge = flops / bytes_moved, peak_flop_per_s / bandwidth_bytes_per_s
    compute_s, memory_s = flops / peak_flop_per_s, bytes_moved / bandwidth_bytes_per_s
    return Roofline(
        flops=flops,
        bytes_moved=bytes_moved,
        peak_flop_per_s=peak_flop_per_s,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        arithmetic_intensity=intensity,
        ridge_point=ridge,
        bound="compute" if intensity >= ridge else "memory",
        compute_min_s=compute_s,
        memory_min_s=memory_s,
        roofline_min_s=max(compute_s, memory_s),
    )
