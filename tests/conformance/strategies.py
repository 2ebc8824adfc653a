"""Hypothesis strategies: attention problems drawn as small shape/dtype/layout records plus an integer seed.

Hypothesis draws only the record (`Case`); the tensors come from a seeded torch.Generator, so an example is
cheap to build and shrinks well (smaller sizes, smaller seeds).

Two kinds of sizes are drawn, and every property gets both:
- toy sizes (T <= 24, D <= 33, B <= 3, H <= 4): odd shapes, Tq = 1, Tk = 1, every structural corner, cheap;
- kernel sizes (`kernel_shapes`): where real kernels switch code paths and break. Kernels tile queries and keys
  in blocks of 64 or 128 (a bug lives on the ragged last tile, on the diagonal tile, or one tile past the
  first), specialise head dims 64/80/96/128/256 (a separate code path each), launch one program per
  (batch, head) (a bug indexes the wrong program or drops those past a launch limit), and switch to split-KV
  paths for long key rows in decoding. One regime per draw keeps each example affordable: long rows with one
  or two heads, real head dims on short rows, or many programs on short rows and small heads. Grouped-query
  draws (every feature, fp8) use the head layouts of shipped models there (`grouped_heads`): 32:8, 64:8, 16:8,
  28:4, 32:1 and 32:32 in the many-programs regime, one key/value head with a group of 1, 2, 4, 7 or 8 on rows.
On top of what hypothesis draws, `boundary_cases` are fixed kernel-size examples every property runs in every
profile, so the tile boundaries are always exercised however few examples a profile draws.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from hypothesis import settings
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "bthd", "strided")  # bthd: (B, T, H, D) memory transposed to (B, H, T, D), as in the GPT
MAGNITUDES = (0.1, 1.0, 3.0, 10.0, 30.0)  # std of q and k; logits have std ~ magnitude**2 (up to ~900)
HUGE_MAGNITUDES = (100.0, 1000.0)  # logits ~1e4 .. 1e6: only softmax's max-subtraction keeps these finite
MAX_T = 24  # toy sequence lengths: properties are about structure first

# Kernel sizes (see the module docstring for why each is there).
TILE_LENGTHS = (63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025)  # +-1 around 64k tiles
LONG_LENGTHS = (2047, 2048, 2049)  # past 2048: long-row and split-KV paths (drawn by the thorough profile only)
SHORT_TILE_LENGTHS = (63, 64, 65, 127, 128, 129)  # one tile and around it: rows for real head dims
KERNEL_HEAD_DIMS = (64, 80, 96, 128, 256)  # the head dims kernels compile a specialisation for
LONG_ROW_HEAD_DIMS = (16, 32, 64)  # head dims for long rows: 64 is the most common, smaller ones keep T cheap
MANY_HEADS = (16, 32)  # many programs: B * H >= 64 with H up to 32 (B from ceil(64 / H) to 4)
MIN_PROGRAMS = 64
# (Hq, Hkv) of models people ship, for grouped draws in the many-programs regime: Llama 3 8B and Mistral 7B 32:8,
# Llama 3 70B and gpt-oss-120b 64:8, Gemma 2 9B 16:8, Qwen2 7B 28:4 (a group of 7), multi-query 32:1, Llama 2 7B 32:32
MODEL_HEADS = ((32, 8), (64, 8), (16, 8), (28, 4), (32, 1), (32, 32))
MODEL_GROUPS = (1, 2, 4, 7, 8)  # their group sizes up to 8: the query heads of one key/value head on long rows
THOROUGH_PROFILE = "thorough"  # the profile that also draws LONG_LENGTHS
KERNEL_SHARE = 4  # one draw in KERNEL_SHARE is kernel-sized (the rest toy): enough to reach every regime in ci
KERNEL_DTYPE = torch.float32  # kernel-sized draws run in fp32 where the backend has it (toy draws: every dtype):
# the dtype kernels are judged in at these sizes, and one specialisation for a compiling backend, not three
SCALES = (0.01, 0.1, 0.37, 1.0, 3.0)  # explicit scales: a few values (a compiling backend specialises on each)


_KERNEL_DRAWS = contextvars.ContextVar("kernel_draws", default=True)


@contextlib.contextmanager
def toy_sizes_only() -> Iterator[None]:
    """Inside: no kernel-sized draws and no fixed kernel-size examples (run_property), for a kernel that runs at
    numpy speed (Triton's interpreter), whose tile boundaries are then tested by chosen small shapes instead."""
    token = _KERNEL_DRAWS.set(False)
    try:
        yield
    finally:
        _KERNEL_DRAWS.reset(token)


def kernel_sizes_enabled() -> bool:
    return _KERNEL_DRAWS.get()


def long_rows_enabled() -> bool:
    """True under the thorough profile: rows past 2048 are drawn, and run as a fixed example, there only."""
    return settings.get_current_profile_name() == THOROUGH_PROFILE


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
    layout: str  # one of LAYOUTS; anything but "contiguous" gives non-contiguous q, k, v and upstream gradient
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
        """A random upstream gradient dO: (B, H, Tq, D), in the same layout as q (a kernel that assumes a
        contiguous dO reads the wrong elements of a transposed or strided one)."""
        g = torch.Generator().manual_seed(self.seed + 1)
        return self._make(g, self.Tq, 1.0, device)

    @property
    def programs(self) -> int:
        return self.B * self.H

    def with_(self, **kw) -> Case:
        return replace(self, **kw)


@st.composite
def kernel_shapes(draw, *, min_tq: int = 1, long: bool = False, tq_eq_tk=None) -> tuple[int, int, int, int, int]:
    """(B, H, Tq, Tk, D) at kernel scale, in one of three regimes (module docstring); Tq <= Tk.

    Tq is Tk (prefill), 1 (decode against the long Tk), or a shorter length on another tile phase (chunked
    prefill: 1 < Tq < Tk with Tq and Tk on different sides of a tile boundary)."""
    regime = draw(st.sampled_from(("long_rows", "head_dims", "programs")))
    if regime == "long_rows":
        lengths = TILE_LENGTHS + (LONG_LENGTHS if long else ())
        b, h, d = 1, draw(st.integers(1, 2)), draw(st.sampled_from(LONG_ROW_HEAD_DIMS))
    elif regime == "head_dims":
        lengths = SHORT_TILE_LENGTHS
        b, h, d = 1, draw(st.integers(1, 2)), draw(st.sampled_from(KERNEL_HEAD_DIMS))
    else:
        lengths = (1, 2, 17, 63, 64, 65)
        h = draw(st.sampled_from(MANY_HEADS))
        b, d = draw(st.integers(math.ceil(MIN_PROGRAMS / h), 4)), draw(st.integers(1, 16))
    tk = draw(st.sampled_from([t for t in lengths if t >= min_tq]))
    shorter = [t for t in (1, *lengths) if min_tq <= t < tk]
    same = draw(st.booleans()) if tq_eq_tk is None else tq_eq_tk
    tq = tk if same or not shorter else draw(st.sampled_from(shorter))
    return b, h, tq, tk, d


@st.composite
def grouped_heads(draw, base: Case, *, max_t: int = MAX_T, kv_heads: int = 2) -> tuple[Case, int]:
    """(base with H = Hq, Hkv) for a grouped-query draw, by the regime `cases` drew base in: many programs take a
    real model's layout (MODEL_HEADS, B * Hq >= 64); kernel-sized rows one key/value head and a real model's group
    (MODEL_GROUPS); toy sizes a group of 1 to 4 over 1 to `kv_heads` key/value heads."""
    if base.H in MANY_HEADS:  # kernel_shapes' many-programs regime
        hq, hkv = draw(st.sampled_from(MODEL_HEADS))
        return base.with_(B=max(base.B, math.ceil(MIN_PROGRAMS / hq)), H=hq), hkv
    if base.Tk > max_t:  # kernel-sized rows or head dims
        return base.with_(H=draw(st.sampled_from(MODEL_GROUPS))), 1
    group, hkv = draw(st.integers(1, 4)), draw(st.integers(1, kv_heads))
    return base.with_(H=group * hkv), hkv


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
    kernel: bool = True,
    long: bool | None = None,
) -> Case:
    """A Case with Tq <= Tk. `causal`/`tq_eq_tk` None means drawn; dtypes must be non-empty.

    kernel: one draw in KERNEL_SHARE is kernel-sized (`kernel_shapes`); long: kernel sizes include LONG_LENGTHS
    (None: under the thorough profile)."""
    long = long_rows_enabled() if long is None else long
    big = kernel and kernel_sizes_enabled() and draw(st.integers(1, KERNEL_SHARE)) == 1
    if big:
        b, h, tq, tk, d = draw(kernel_shapes(min_tq=min_tq, long=long, tq_eq_tk=tq_eq_tk))
        dtypes = [KERNEL_DTYPE] if KERNEL_DTYPE in dtypes else dtypes
    else:
        tk = draw(st.integers(min_tq, max_t))
        same = draw(st.booleans()) if tq_eq_tk is None else tq_eq_tk
        tq = tk if same else draw(st.integers(min_tq, tk))
        b, h, d = draw(st.integers(1, max_b)), draw(st.integers(1, max_h)), draw(st.integers(1, max_d))
    is_causal = draw(st.booleans()) if causal is None else causal
    scale = draw(st.sampled_from(SCALES)) if explicit_scale else None
    return Case(
        B=b,
        H=h,
        Tq=tq,
        Tk=tk,
        D=d,
        dtype=draw(st.sampled_from(list(dtypes))),
        causal=is_causal,
        magnitude=draw(st.sampled_from(magnitudes)),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
        scale=scale,
        t=0,
    )


def boundary_cases(dtype: torch.dtype, *, long: bool = False) -> list[Case]:
    """The fixed kernel-size examples every op-level property runs in every profile (why each, beside it)."""
    base = dict(dtype=dtype, magnitude=1.0, seed=1234, causal=True, layout="contiguous")
    out = [
        Case(B=1, H=2, Tq=129, Tk=129, D=64, **base),  # one past a 128-key tile: a ragged last tile of one key
        Case(B=1, H=1, Tq=1, Tk=1025, D=64, **{**base, "layout": "bthd"}),  # decode against a long cache
        Case(B=1, H=1, Tq=65, Tk=1024, D=32, **base),  # chunked prefill: Tq and Tk on different tile phases
        Case(B=1, H=1, Tq=513, Tk=513, D=32, **{**base, "causal": False, "layout": "strided"}),  # 512-tiles + 1
        Case(B=1, H=1, Tq=127, Tk=255, D=256, **base),  # the largest head dim, just under two tiles
        Case(B=1, H=1, Tq=64, Tk=64, D=80, **{**base, "layout": "bthd"}),  # exactly one tile, a non-pow2 head dim
        Case(B=3, H=32, Tq=65, Tk=65, D=16, **{**base, "causal": False}),  # 96 programs, H = 32
    ]
    if long:
        out.append(Case(B=1, H=1, Tq=2048, Tk=2049, D=64, **base))  # the longest rows, one key past 2048
    return out


@st.composite
def causal_cut_cases(draw, dtypes, **kw) -> Case:
    """Causal cases with Tq >= 2 and a cut t among the query positions that leaves something after it."""
    case = draw(cases(dtypes, causal=True, min_tq=2, **kw))
    return case.with_(t=draw(st.integers(case.Tk - case.Tq, case.Tk - 2)))


def with_cut(case: Case) -> Case:
    """A boundary case made fit for the causality properties: causal, Tq >= 2, the cut on a tile boundary."""
    tq = max(case.Tq, 2)
    return case.with_(causal=True, Tq=tq, t=max(case.Tk - tq, min(case.Tk - 2, 127)))


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
    n_kv_head: int | None = None  # key/value heads (GQA when < n_head); None: n_head
    window: int | None = None  # the GPT's sliding window; None: plain causal


MODEL_HEAD_SIZES = (1, 4, 7, 8, 64, 80)  # odd toy head sizes, and real ones (64, and 80 off the power of two)
MODEL_LENGTHS = (129, 160)  # past one 128-key tile, ragged (the GPT's block_size follows T)


@st.composite
def model_cases(draw, max_t: int = 16) -> ModelCase:
    """Toy GPTs, and one draw in KERNEL_SHARE with a real head size and a sequence past 128."""
    big = kernel_sizes_enabled() and draw(st.integers(1, KERNEL_SHARE)) == 1
    T = draw(st.sampled_from(MODEL_LENGTHS)) if big else draw(st.integers(2, max_t))
    return ModelCase(
        n_layer=1 if big else draw(st.integers(1, 2)),
        n_head=draw(st.integers(1, 2 if big else 3)),
        head_size=draw(st.sampled_from(MODEL_HEAD_SIZES[4:] if big else MODEL_HEAD_SIZES)),
        B=1 if big else draw(st.integers(1, 2)),
        T=T,
        t=draw(st.integers(0, T - 2)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


MODEL_BOUNDARY = ModelCase(n_layer=1, n_head=2, head_size=64, B=1, T=130, t=127, seed=7)  # head 64, T past 128
