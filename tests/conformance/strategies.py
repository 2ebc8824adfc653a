"""Hypothesis strategies: attention problems drawn as small shape/dtype/layout records plus an integer seed.

Hypothesis draws only the record (`Case`); the tensors come from a seeded torch.Generator, so an example is
cheap to build and shrinks well (smaller sizes, smaller seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

ALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "bthd", "strided")  # bthd: (B, T, H, D) memory transposed to (B, H, T, D), as in the GPT
MAGNITUDES = (0.1, 1.0, 3.0, 10.0, 30.0)  # std of q and k; logits have std ~ magnitude**2 (up to ~900)
HUGE_MAGNITUDES = (100.0, 1000.0)  # logits ~1e4 .. 1e6: only softmax's max-subtraction keeps these finite
MAX_T = 24  # sequence lengths stay small: properties are about structure, not size


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    Tq: int
    Tk: int
    D: int
    dtype: torch.dtype
    causal: bool
    magnitude: float  # std of q and k (v has std 1)
    layout: str  # one of LAYOUTS; anything but "contiguous" gives non-contiguous q, k, v
    seed: int
    scale: float | None = None  # explicit softmax scale, None for the default 1/sqrt(D)
    t: int = 0  # a cut position (absolute) for causality properties: Tk - Tq <= t < Tk - 1

    def _make(self, g: torch.Generator, T: int, mag: float, device) -> torch.Tensor:
        """(B, H, T, D) in self.dtype on device; the layout is applied after the cast so it survives it."""
        B, H, D = self.B, self.H, self.D
        shape = {"bthd": (B, T, H, D), "strided": (B, H, T, 2 * D)}.get(self.layout, (B, H, T, D))
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * mag).to(device=device, dtype=self.dtype)
        if self.layout == "bthd":
            return x.transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D) memory, as in the GPT
        if self.layout == "strided":
            return x[..., ::2]  # every other feature: a gap between elements
        return x

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (B, H, Tq, D); k, v: (B, H, Tk, D) in self.dtype on `device`, laid out as self.layout says."""
        g = torch.Generator().manual_seed(self.seed)
        q = self._make(g, self.Tq, self.magnitude, device)
        k = self._make(g, self.Tk, self.magnitude, device)
        v = self._make(g, self.Tk, 1.0, device)
        return q, k, v

    def upstream(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A random upstream gradient dO: (B, H, Tq, D)."""
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(self.B, self.H, self.Tq, self.D, generator=g, dtype=torch.float64).to(device, self.dtype)

    def with_(self, **kw) -> Case:
        return replace(self, **kw)


@st.composite
def cases(
    draw,
    dtypes,
    *,
    causal=None,
    min_tq: int = 1,
    max_t: int = MAX_T,
    max_b: int = 3,
    max_h: int = 4,
    max_d: int = 33,
    magnitudes=MAGNITUDES,
    explicit_scale: bool = False,
    tq_eq_tk=None,
) -> Case:
    """A Case with Tq <= Tk. `causal`/`tq_eq_tk` None means drawn; dtypes must be non-empty."""
    tk = draw(st.integers(min_tq, max_t))
    same = draw(st.booleans()) if tq_eq_tk is None else tq_eq_tk
    tq = tk if same else draw(st.integers(min_tq, tk))
    is_causal = draw(st.booleans()) if causal is None else causal
    scale = draw(st.floats(0.01, 3.0)) if explicit_scale else None
    return Case(
        B=draw(st.integers(1, max_b)),
        H=draw(st.integers(1, max_h)),
        Tq=tq,
        Tk=tk,
        D=draw(st.integers(1, max_d)),
        dtype=draw(st.sampled_from(list(dtypes))),
        causal=is_causal,
        magnitude=draw(st.sampled_from(magnitudes)),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
        scale=scale,
        t=0,
    )


@st.composite
def causal_cut_cases(draw, dtypes, **kw) -> Case:
    """Causal cases with Tq >= 2 and a cut t among the query positions that leaves something after it."""
    case = draw(cases(dtypes, causal=True, min_tq=2, **kw))
    t = draw(st.integers(case.Tk - case.Tq, case.Tk - 2))
    return case.with_(t=t)


@dataclass(frozen=True)
class ModelCase:
    """A tiny GPT problem: config sizes, a token sequence length T, a cut t < T - 1 and a seed."""

    n_layer: int
    n_head: int
    head_size: int
    B: int
    T: int
    t: int
    seed: int


@st.composite
def model_cases(draw, max_t: int = 16) -> ModelCase:
    T = draw(st.integers(2, max_t))
    return ModelCase(
        n_layer=draw(st.integers(1, 2)),
        n_head=draw(st.integers(1, 3)),
        head_size=draw(st.sampled_from([1, 4, 7, 8])),
        B=draw(st.integers(1, 2)),
        T=T,
        t=draw(st.integers(0, T - 2)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
