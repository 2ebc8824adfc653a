"""The call as a value: the keywords of one attention call, what each means, and the checks every call gets.

A backend computes multi-head attention on already-projected tensors:

    out = backend(q, k, v, **keywords)     # keywords: the fields of AttentionCall, each optional
    q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv) with Tq <= Tk and Hq % Hkv == 0; same dtype
    and device; out: (B, Hq, Tq, Dv), or (out, lse) with return_lse=True

    call = AttentionCall(causal=True, window=256, softcap=50.0)
    call.visibility            # what a query may see (visibility.Visibility: dense mask, visible pairs, block rows)
    call.scores                # how its scores are shaped (scores.Scores: softcap, score_mod, ALiBi)
    call.features(q, k, v)     # the optional features it needs, e.g. ["gqa", "window", "softcap"]
    call.check(q, k, v)        # AttentionInputError naming the first broken rule
    call.keywords()            # what the backend's function is given (a keyword it was not given stays unset)

`scale` defaults to 1/sqrt(D), the per-head size. Causal attention with Tq < Tk is aligned to the bottom
right: query i sits at absolute position Tk - Tq + i and sees keys 0 .. Tk - Tq + i (KV-cache decoding,
chunked prefill).

Optional features (FEATURES), each off by default; a backend declares those it implements:
- gqa: Hkv < Hq (grouped-query attention; MQA is Hkv = 1): query head h reads key/value head h // (Hq // Hkv).
- window (int >= 1, causal only): the query at absolute position p sees keys p - window + 1 .. p.
- mask_mod(b, h, q_idx, kv_idx) -> bool tensor (FlexAttention's convention, broadcasting index tensors, on
  absolute positions, h the query head): True where the query may see the key.
- document_ids ((B, Tk) integer tensor, packed sequences): the query at absolute position p sees only keys j
  with document_ids[b, j] == document_ids[b, p].
- softcap (float > 0): logits -> softcap * tanh(logits / softcap), applied before masking.
- value_dim: Dv != D (DeepSeek MLA: D = 192, Dv = 128); the default scale stays 1/sqrt(D).
- score_mod(score, b, h, q_idx, kv_idx) -> score (FlexAttention's convention, absolute positions), applied
  after softcap (softcap is the score_mod c * tanh(score / c)); it must be differentiable in `score`.
- alibi_slopes ((Hq,) or (B, Hq) float tensor, constants): adds -slope * |p - j| to the logit of the query at
  absolute position p and key j (flash-attn's bias), after score_mod, before masking.
- sinks ((Hq,) float tensor, learned, gradients flow to it; gpt-oss): one more logit per head in the softmax
  denominator that has no value: out = sum_j exp(s_j - lse) v_j with lse = log(exp(sink_h) + sum_j exp(s_j)).
- return_lse (bool): also return lse, (B, Hq, Tq) in float32 (float64 for float64 inputs), the natural log of
  the softmax denominator after every transform and mask (sink included), differentiable; -inf for a row that
  sees no key and has no sink. Shards of the keys merge by it: lse = logsumexp_s lse_s, out = sum_s
  exp(lse_s - lse) out_s (split-KV, ring and context-parallel attention).
- fp8 (q, k, v in torch.float8_e4m3fn, with descale=(q_descale, k_descale, v_descale), float32 tensors of shape
  () or (B, Hkv), FlashAttention-3's convention; a query head reads the q_descale of its key/value head): the
  attention of q * q_descale, k * k_descale, v * v_descale, returned in bfloat16 (the lse in float32). A descale
  is required with fp8 inputs and refused without them.
Every mask given is combined by AND. A query row that sees no key at all (possible with mask_mod) outputs
zeros, and its gradient with respect to q, k and v is zero.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import AttentionInputError
from .scores import ScoreMod, Scores
from .visibility import Visibility

BASE_FEATURES = ("gqa", "window", "mask_mod", "document_ids", "softcap")  # masks, GQA and softcap


FEATURES = (*BASE_FEATURES, "value_dim", "score_mod", "alibi", "sinks", "return_lse", "fp8")  # every optional feature


FP8 = torch.float8_e4m3fn  # the fp8 inputs the contract takes (e4m3: 3 mantissa bits, up to 448)


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """The keywords of one call (see the module docstring for each); the one list of them."""

    causal: bool = True
    dropout_p: float = 0.0
    scale: float | None = None  # None: 1/sqrt(D)
    window: int | None = None
    mask_mod: MaskMod | None = None
    document_ids: torch.Tensor | None = None  # (B, Tk) integer
    softcap: float | None = None
    score_mod: ScoreMod | None = None
    alibi_slopes: torch.Tensor | None = None  # (Hq,) or (B, Hq)
    sinks: torch.Tensor | None = None  # (Hq,)
    return_lse: bool = False
    descale: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # fp8: (q, k, v) descales

    @classmethod
    def of(cls, keywords: dict) -> AttentionCall:
        """The call of these keywords; a keyword the contract does not have is a TypeError naming the known ones."""
        if unknown := set(keywords) - set(KEYWORDS):
            raise TypeError(f"unknown attention keyword(s) {sorted(unknown)}; the contract's: {', '.join(KEYWORDS)}")
        return cls(**keywords)

    @property
    def visibility(self) -> Visibility:
        return Visibility(self.causal, self.window, self.mask_mod, self.document_ids)

    @property
    def scores(self) -> Scores:
        return Scores(self.softcap, self.score_mod, self.alibi_slopes)

    def keywords(self) -> dict:
        """causal, dropout_p and scale always; every other keyword only when given (not its default), so a backend
        function that does not take a feature never sees its keyword."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            name: value
            for name, value in given.items()
            if name in ALWAYS_GIVEN or not (value is None or value is False)
        }

    def features(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> list[str]:
        """The optional features (FEATURES) this call needs on q, k, v (value_dim only when v is given)."""
        value_dim = v is not None and v.size(-1) != k.size(-1)
        shapes = {"gqa": q.size(1) != k.size(1), "value_dim": value_dim, "return_lse": self.return_lse}
        shapes["fp8"] = q.dtype == FP8
        given = {"window": self.window, "mask_mod": self.mask_mod, "document_ids": self.document_ids}
        given |= {"softcap": self.softcap, "score_mod": self.score_mod, "alibi": self.alibi_slopes, "sinks": self.sinks}
        return [name for name, on in shapes.items() if on] + [
            name for name, value in given.items() if value is not None
        ]

    def check(self, q, k, v) -> None:
        """Raise AttentionInputError naming the first broken rule of the backend contract."""
        if not isinstance(self.causal, bool):  # a string such as 'no' is truthy: it would silently mean causal
            raise AttentionInputError(f"causal must be True or False, got {self.causal!r}")
        _check_qkv(q, k, v)
        if not (0.0 <= self.dropout_p < 1.0):
            raise AttentionInputError(f"dropout_p must be in [0, 1), got {self.dropout_p}")
        if (scale := self.scale) is not None and not (_is_real(scale) and math.isfinite(scale) and scale > 0):
            raise AttentionInputError(f"scale must be a positive finite number or None, got {scale!r}")
        _check_features(q, k, self.causal, self.window, self.mask_mod, self.document_ids, self.softcap)
        _check_score_features(q, self.score_mod, self.alibi_slopes, self.sinks, self.return_lse)
        _check_descale(q, k, self.descale)


KEYWORDS = tuple(f.name for f in dataclasses.fields(AttentionCall))  # the contract's keywords, in order


ALWAYS_GIVEN = ("causal", "dropout_p", "scale")  # every backend function takes these


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise AttentionInputError(
                f"{name} must have rank 4 (B, H, T, D), got rank {t.dim()} with shape {tuple(t.shape)}"
            )
    if k.shape[:-1] != v.shape[:-1] or v.size(-1) == 0:
        raise AttentionInputError(
            f"k and v must agree on (B, Hkv, Tk) and Dv > 0: k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    (bq, hq, tq, dq), (bk, hk, tk, dk) = q.shape, k.shape
    if (bq, dq) != (bk, dk):
        raise AttentionInputError(
            f"q {tuple(q.shape)} and k/v {tuple(k.shape)} must agree on batch and head size (B, _, _, D)"
        )
    if hq == 0 or tq == 0 or dq == 0:
        raise AttentionInputError(f"no heads, empty sequence or empty head size (H, Tq, D): q {tuple(q.shape)}")
    if hk == 0 or hq % hk:
        raise AttentionInputError(
            f"the query heads Hq={hq} must be a multiple of the key/value heads Hkv={hk} "
            f"(q {tuple(q.shape)}, k/v {tuple(k.shape)})"
        )
    if tq > tk:
        raise AttentionInputError(f"Tq must be <= Tk, got Tq={tq} > Tk={tk}")
    if not (q.dtype == k.dtype == v.dtype):
        raise AttentionInputError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise AttentionInputError(f"attention needs floating-point inputs, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise AttentionInputError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def _check_descale(q, k, descale) -> None:
    if q.dtype != FP8:
        if descale is not None:  # a descale given to bf16 inputs would be silently ignored
            raise AttentionInputError(f"descale is only for fp8 (float8_e4m3fn) inputs, not {q.dtype}")
        return
    if descale is None:  # fp8 values without their scales are not the numbers they stand for
        raise AttentionInputError("fp8 inputs need descale=(q_descale, k_descale, v_descale)")
    if not (isinstance(descale, tuple | list) and len(descale) == 3):
        raise AttentionInputError(f"descale must be (q_descale, k_descale, v_descale), got {type(descale).__name__}")
    shapes = {(), (k.size(0), k.size(1))}
    for name, d in zip(("q_descale", "k_descale", "v_descale"), descale, strict=True):
        if not (isinstance(d, torch.Tensor) and d.dtype == torch.float32 and tuple(d.shape) in shapes):
            raise AttentionInputError(
                f"{name} must be a float32 tensor of shape () or (B, Hkv) = {(k.size(0), k.size(1))}, got "
                + (f"{d.dtype} {tuple(d.shape)}" if isinstance(d, torch.Tensor) else type(d).__name__)
            )
        if d.device != q.device or not (torch.isfinite(d).all() and (d > 0).all()):
            raise AttentionInputError(f"{name} must be positive and finite, on q's device")


def _check_score_features(q, score_mod, alibi_slopes, sinks, return_lse) -> None:
    if not isinstance(return_lse, bool):
        raise AttentionInputError(f"return_lse must be True or False, got {return_lse!r}")
    if score_mod is not None and not callable(score_mod):
        raise AttentionInputError(f"score_mod must be callable (score, b, h, q_idx, kv_idx) -> score: {score_mod!r}")
    b, hq = q.size(0), q.size(1)
    for name, t, shapes in (("alibi_slopes", alibi_slopes, [(hq,), (b, hq)]), ("sinks", sinks, [(hq,)])):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise AttentionInputError(f"{name} must have shape {want} (per query head), got {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise AttentionInputError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != q.device:
            raise AttentionInputError(f"{name} is on {t.device}, q on {q.device}")


def _check_features(q, k, causal, window, mask_mod, document_ids, softcap) -> None:
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise AttentionInputError(f"window must be an int >= 1 or None, got {window!r}")
        if not causal:
            raise AttentionInputError("window needs causal=True (a sliding window looks back from each query)")
    if mask_mod is not None:
        _check_mask_mod(mask_mod, q, k)
    if document_ids is not None:
        if not isinstance(document_ids, torch.Tensor):
            raise AttentionInputError(f"document_ids must be a torch.Tensor, got {type(document_ids).__name__}")
        want = (q.size(0), k.size(-2))
        if tuple(document_ids.shape) != want:
            raise AttentionInputError(f"document_ids must have shape (B, Tk) = {want}, got {tuple(document_ids.shape)}")
        dt = document_ids.dtype
        if dt.is_floating_point or dt.is_complex or dt == torch.bool:
            raise AttentionInputError(f"document_ids must be an integer tensor, got {dt}")
        if document_ids.device != q.device:
            raise AttentionInputError(f"document_ids is on {document_ids.device}, q on {q.device}")
    if softcap is not None and not (_is_real(softcap) and math.isfinite(softcap) and softcap > 0):
        raise AttentionInputError(f"softcap must be a positive finite number or None, got {softcap!r}")
    if softcap is not None and softcap > torch.finfo(q.dtype).max:  # softcap * tanh(.) would overflow to inf, NaN
        raise AttentionInputError(
            f"softcap {float(softcap)} exceeds the largest {q.dtype} ({torch.finfo(q.dtype).max:.6g}): "
            "the capped logits would overflow"
        )


def _is_real(x) -> bool:
    """A real number (numpy scalars included), not a bool: True would silently mean 1.0."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, torch.Tensor))


def _check_mask_mod(mask_mod, q: torch.Tensor, k: torch.Tensor) -> None:
    """Call mask_mod on a 2 x 2 x 2 x 2 grid of valid indices (FlexAttention's broadcasting convention): it must
    return a bool tensor that broadcasts to the grid, or the error would surface inside the backend."""
    if not callable(mask_mod):
        raise AttentionInputError(f"mask_mod must be callable (b, h, q_idx, kv_idx) -> bool, got {mask_mod!r}")
    (b, hq, tq, _), tk, dev = q.shape, k.size(-2), q.device
    grid = [
        torch.arange(min(2, n), device=dev).view([-1 if d == i else 1 for d in range(4)])
        for i, n in enumerate((b, hq, tq, tk))
    ]
    grid[2] = grid[2] + (tk - tq)  # absolute query positions
    m = mask_mod(*grid)
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        got = m.dtype if isinstance(m, torch.Tensor) else (None if m is None else type(m).__name__)
        raise AttentionInputError(f"mask_mod must return a bool tensor, got {got}")
    shape = torch.broadcast_shapes(*(g.shape for g in grid))  # (<=2, <=2, <=2, <=2)
    try:
        fits = torch.broadcast_shapes(m.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise AttentionInputError(
            f"mask_mod returned shape {tuple(m.shape)} for index tensors broadcasting to {tuple(shape)}: it must "
            "broadcast b, h, q_idx and kv_idx elementwise"
        )
