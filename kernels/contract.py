"""The backend contract: what a backend computes, the Backend that declares it, and the checks every call gets.

A backend computes multi-head attention on already-projected tensors:

    out = backend(q, k, v, *, causal=True, dropout_p=0.0, scale=None,
                  window=None, mask_mod=None, document_ids=None, softcap=None,
                  score_mod=None, alibi_slopes=None, sinks=None, return_lse=False, descale=None)
    q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv) with Tq <= Tk and Hq % Hkv == 0; same dtype
    and device; out: (B, Hq, Tq, Dv), or (out, lse) with return_lse=True

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

Every call through the registry is checked: the inputs (`causal` a real bool, no empty dimension), the
backend's own refusal for this device and dtype, its working set against the available memory (backends that
materialize the score matrix declare it), and the output (shape, dtype, device), with an error naming the
backend.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch

BASE_FEATURES = ("gqa", "window", "mask_mod", "document_ids", "softcap")  # masks, GQA and softcap


FEATURES = (*BASE_FEATURES, "value_dim", "score_mod", "alibi", "sinks", "return_lse", "fp8")  # every optional feature


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class AttendFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = True,
        dropout_p: float = 0.0,
        scale: float | None = None,
        window: int | None = None,
        mask_mod: MaskMod | None = None,
        document_ids: torch.Tensor | None = None,
        softcap: float | None = None,
        score_mod: ScoreMod | None = None,
        alibi_slopes: torch.Tensor | None = None,
        sinks: torch.Tensor | None = None,
        return_lse: bool = False,
        descale: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


class AttentionInputError(ValueError):
    """Raised when inputs break the backend contract (rank, shapes, dtypes, devices, dropout)."""


class BackendOutputError(RuntimeError):
    """Raised when a backend returns something other than the contract's output (shape, dtype, device)."""


class UnknownBackendError(KeyError):
    """Raised for a backend name that is neither registered nor an importable `module:function`."""

    def __str__(self) -> str:  # KeyError would repr() the message and wrap it in quotes
        return str(self.args[0])


NAN_INPUTS = ("q", "key", "value")  # the inputs the non-finite-input contract poisons, one at a time


@dataclass(frozen=True)
class NanDeparture:
    """How a backend departs from the non-finite-input contract (attnbench.conformance.nan_contract), and only
    how: a NaN in an input of `spreads` may reach rows that cannot see it, and a NaN in an input of `hides` may
    come out as a finite row that sees it. Any other violation still fails the contract."""

    why: str  # one sentence, shown with the expected failure
    spreads: frozenset[str] = frozenset()  # of NAN_INPUTS
    hides: frozenset[str] = frozenset()  # of NAN_INPUTS

    def __post_init__(self):
        for field in ("spreads", "hides"):
            inputs = frozenset(getattr(self, field))
            if unknown := inputs - set(NAN_INPUTS):
                raise ValueError(f"NanDeparture.{field}: unknown inputs {sorted(unknown)}; known: {NAN_INPUTS}")
            object.__setattr__(self, field, inputs)
        if not (self.spreads or self.hides):
            raise ValueError("a NanDeparture names the inputs it spreads or hides a NaN from")

    def __str__(self) -> str:
        return self.why

    def said_of(self, who: str) -> NanDeparture:
        """The same departure, its sentence naming the kernel it was found in."""
        return dataclasses.replace(self, why=f"{who}: {self.why}")

    def excuses(self, kind: str, where: str) -> bool:
        """Whether this departure covers a violation of `kind` ("spreads" or "hides") for a NaN in `where`."""
        return where in getattr(self, kind)


# how weights @ values kernels depart from the NaN contract
NAN_IN_FUTURE_VALUE = NanDeparture(
    "a NaN in a future value reaches every earlier row: its masked weight is 0 and 0 * NaN = NaN in weights @ values",
    spreads={"value"},
)


# how additive-mask kernels depart from it: the mask is added to the NaN score
NAN_IN_FUTURE_KEY_OR_VALUE = NanDeparture(
    "a NaN in a future key or value reaches every earlier row (the causal mask is added to NaN scores; "
    "0 * NaN in weights @ values)",
    spreads={"key", "value"},
)


EMPTY_ROW_OUTPUTS = ("mean_v", "nan")  # what a row that sees no key may come out as, other than the contract's 0


@dataclass(frozen=True)
class EmptyRowDeparture:
    """How a backend departs from the empty-row convention: a row that sees no key comes out as one of `outputs`
    instead of the contract's zeros: "mean_v" (a finite mask value, e.g. the dtype's minimum, weighs every key
    alike: the mean of v over all Tk keys) or "nan" (a softmax over -inf only). The suite then holds such rows to
    the declared outputs, sends them no upstream gradient, and judges every other row as usual."""

    why: str  # one sentence, shown as the declared departure
    outputs: frozenset[str]  # of EMPTY_ROW_OUTPUTS

    def __post_init__(self):
        outputs = frozenset([self.outputs] if isinstance(self.outputs, str) else self.outputs)
        if unknown := outputs - set(EMPTY_ROW_OUTPUTS):
            raise ValueError(f"EmptyRowDeparture.outputs: unknown {sorted(unknown)}; known: {EMPTY_ROW_OUTPUTS}")
        if not outputs:
            raise ValueError("an EmptyRowDeparture names what an empty row comes out as: 'mean_v' and/or 'nan'")
        object.__setattr__(self, "outputs", outputs)

    def __str__(self) -> str:
        return self.why


@dataclass(frozen=True)
class PrecisionDeparture:
    """How a backend departs from computing in the dtype it is given: `computes` maps an input dtype to the lower
    one it is computed in (e.g. {torch.float64: torch.float32}). The suite then judges inputs of that dtype by the
    lower dtype's rounding (the pass rule's naive formula and atol in it), not as what they are not."""

    why: str  # one sentence, shown as the declared departure
    computes: Mapping[torch.dtype, torch.dtype]  # input dtype -> the dtype it is computed in

    def __post_init__(self):
        computes = dict(self.computes)
        for given, used in computes.items():
            if (
                not (given.is_floating_point and used.is_floating_point)
                or torch.finfo(used).eps <= torch.finfo(given).eps
            ):
                raise ValueError(f"PrecisionDeparture: {used} is not a lower precision than {given}")
        if not computes:
            raise ValueError("a PrecisionDeparture maps an input dtype to the lower one it is computed in")
        object.__setattr__(self, "computes", MappingProxyType(computes))

    def __str__(self) -> str:
        return self.why

    def __hash__(self) -> int:
        return hash((self.why, tuple(self.computes.items())))

    def dtype_computed(self, given: torch.dtype) -> torch.dtype:
        """The dtype inputs of `given` are computed in."""
        return self.computes.get(given, given)


def always_supported(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def dropout_supported(device: torch.device) -> str | None:
    return None


def declared_features_supported(feature: str, device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """A registered attention implementation.

    `unsupported_reason(device, dtype)` returns None when the backend can run there, else a sentence
    saying why not (tests and benchmarks skip with that sentence). `no_dropout_reason(device)` likewise
    says why the backend cannot apply dropout_p > 0 there; such a call raises AttentionInputError.
    `features` are the optional features (FEATURES) the backend implements; `no_feature_reason(feature,
    device)` may still refuse a declared one on a device. A backend that declares nothing is dense MHA.
    `no_backward_reason` is None for a backend with a backward, else the sentence saying why it is forward-only
    (an inference runtime, a decode kernel), or a callable (device) -> sentence | None where that depends on
    the device: gradient properties skip with the sentence and benchmarks time its forward only.
    """

    name: str
    fn: AttendFn
    description: str
    unsupported_reason: Callable[[torch.device, torch.dtype], str | None] = always_supported
    no_dropout_reason: Callable[[torch.device], str | None] = dropout_supported
    features: frozenset[str] = frozenset()
    no_feature_reason: Callable[[str, torch.device], str | None] = declared_features_supported

    no_backward_reason: str | Callable[[torch.device], str | None] | None = None
    # bytes the backend allocates for a call (it materializes the score matrix), None: it never does; a call
    # that cannot fit in the device's available memory is refused up front with this estimate
    working_set: Callable[[torch.Tensor, torch.Tensor], int] | None = None
    # how the backend departs from the non-finite-input contract (see attnbench.conformance.nan_contract), if it does
    nan_departure: NanDeparture | None = None
    # how it departs from the contract's zero output for a row that sees no key, and from computing in the dtype it
    # is given, if it does: the suite holds it to what is declared and reports each once as "declared"
    empty_row_departure: EmptyRowDeparture | None = None
    precision_departure: PrecisionDeparture | None = None
    # a row's output is bit-identical whatever the batch size, its place in the batch and the query rows computed
    # beside it (what batch-invariant inference needs); the batch_invariance property holds a backend to it
    batch_invariant: bool = False
    # the backend's own ragged-batch and paged-cache implementations (attnbench.layouts), None: the exact default
    # built on its dense call runs; each takes that layout's arguments, already checked, and returns q's shape
    varlen: Callable[..., torch.Tensor] | None = None
    paged: Callable[..., torch.Tensor] | None = None
    # two identical calls may differ by rounding (atomic adds in a backward, say): the determinism property then
    # holds it to rounding instead of bit-identity
    nondeterministic: bool = False

    def __post_init__(self):
        if self.nan_departure is not None and not isinstance(self.nan_departure, NanDeparture):
            raise TypeError(
                f"backend {self.name!r}: nan_departure must be an attnbench.NanDeparture(why, spreads=..., hides=...) "
                f"naming the inputs it covers, got {type(self.nan_departure).__name__}"
            )
        for field, kind in (("empty_row_departure", EmptyRowDeparture), ("precision_departure", PrecisionDeparture)):
            if getattr(self, field) is not None and not isinstance(getattr(self, field), kind):
                raise TypeError(f"backend {self.name!r}: {field} must be an attnbench.{kind.__name__}")
        if unknown := set(self.features) - set(FEATURES):
            raise ValueError(f"backend {self.name!r} declares unknown features {sorted(unknown)}; known: {FEATURES}")
        object.__setattr__(self, "features", frozenset(self.features))

    def supports(self, device: torch.device | str, dtype: torch.dtype) -> bool:
        return self.why_unsupported(device, dtype) is None

    def why_unsupported(self, device: torch.device | str, dtype: torch.dtype) -> str | None:
        """None if the backend runs on (device, dtype), else why not. A device that this machine lacks is
        answered here, so a backend's own rule never has to query a CUDA runtime that is not there."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        return self.unsupported_reason(device, dtype)

    def why_no_dropout(self, device: torch.device | str) -> str | None:
        return self.no_dropout_reason(torch.device(device))

    def why_no_backward(self, device: torch.device | str) -> str | None:
        """None if gradients flow through the backend on `device`, else why it is forward-only there."""
        reason = self.no_backward_reason
        return reason(torch.device(device)) if callable(reason) else reason

    def why_not(
        self, device: torch.device | str, dtype: torch.dtype, *, features=(), dropout=False, backward=False
    ) -> str | None:
        """The one question before a call: None if the backend runs it (on `device`, in `dtype`, with these
        contract `features`, dropout or not, a backward or not), else why not, from the first of its declared
        refusals that applies (dropout, backward, a feature, the device and dtype)."""
        device = torch.device(device)
        if dropout and (reason := self.why_no_dropout(device)):
            return f"cannot apply dropout here: {reason}"
        if backward and (reason := self.why_no_backward(device)):
            return (
                f"is forward-only on {device.type} ({reason}); call it on inputs without requires_grad or under "
                "torch.no_grad()"
            )
        for feature in features:
            if reason := self.why_no_feature(feature, device):
                return f"cannot run {feature} on {device.type}: {reason}"
        if reason := self.why_unsupported(device, dtype):
            return f"cannot run on {device}/{dtype}: {reason}"
        return None

    def why_no_feature(self, feature: str, device: torch.device | str) -> str | None:
        """None if the backend implements `feature` (one of FEATURES) on `device`, else one sentence why not."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; known: {FEATURES}")
        if feature not in self.features:
            return f"{self.name} does not implement {feature}"
        return self.no_feature_reason(feature, torch.device(device))

    def __call__(
        self,
        q,
        k,
        v,
        *,
        causal=True,
        dropout_p=0.0,
        scale=None,
        window=None,
        mask_mod=None,
        document_ids=None,
        softcap=None,
        score_mod=None,
        alibi_slopes=None,
        sinks=None,
        return_lse=False,
        descale=None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        extras = {"window": window, "mask_mod": mask_mod, "document_ids": document_ids, "softcap": softcap}
        extras |= {"score_mod": score_mod, "alibi_slopes": alibi_slopes, "sinks": sinks, "descale": descale}
        check_inputs(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, return_lse=return_lse, **extras)
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        features = features_in_use(q, k, v, return_lse=return_lse, **extras)
        if why := self.why_not(q.device, q.dtype, features=features, dropout=dropout_p > 0, backward=backward):
            raise AttentionInputError(f"{self.name} {why}")  # refused, never a silently detached or wrong output
        if self.working_set is not None:
            check_fits_in_memory(self.name, self.working_set(q, k), q.device)
        used = {name: value for name, value in extras.items() if value is not None}  # an old-style fn never sees them
        if return_lse:
            used["return_lse"] = True
        out = self.fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, **used)
        if not return_lse:
            check_output(self.name, out, q, v)
            return out
        if not (isinstance(out, tuple) and len(out) == 2):
            raise BackendOutputError(f"backend {self.name!r} was asked for return_lse=True and returned no (out, lse)")
        check_output(self.name, out[0], q, v)
        check_lse(self.name, out[1], q)
        return out


def check_output(name: str, out, q: torch.Tensor, v: torch.Tensor) -> None:
    """Raise BackendOutputError unless `out` is what the contract promises: (B, Hq, Tq, D) like q, on q's device."""
    expected, dtype = (*q.shape[:-1], v.size(-1)), output_dtype(q.dtype)
    if not isinstance(out, torch.Tensor):
        raise BackendOutputError(f"backend {name!r} returned {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != expected or out.dtype != dtype or out.device != q.device:
        raise BackendOutputError(
            f"backend {name!r} returned shape {tuple(out.shape)} {out.dtype} on {out.device}; the contract needs "
            f"shape {expected} {dtype} on {q.device}"
        )


FP8 = torch.float8_e4m3fn  # the fp8 inputs the contract takes (e4m3: 3 mantissa bits, up to 448)


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The output's dtype for inputs of `dtype`: the same, but bfloat16 for fp8 inputs (FlashAttention-3's)."""
    return torch.bfloat16 if dtype == FP8 else dtype


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a returned lse: float64 for float64 inputs, else float32 (what flash kernels return)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_lse(name: str, lse, q: torch.Tensor) -> None:
    """Raise BackendOutputError unless `lse` is (B, Hq, Tq) in lse_dtype(q.dtype), on q's device."""
    expected, dtype = tuple(q.shape[:-1]), lse_dtype(q.dtype)
    if not isinstance(lse, torch.Tensor):
        raise BackendOutputError(f"backend {name!r} returned an lse of type {type(lse).__name__}, not a torch.Tensor")
    if tuple(lse.shape) != expected or lse.dtype != dtype or lse.device != q.device:
        raise BackendOutputError(
            f"backend {name!r} returned an lse of shape {tuple(lse.shape)} {lse.dtype} on {lse.device}; the "
            f"contract needs (B, Hq, Tq) = {expected} {dtype} on {q.device}"
        )


CHECK_MEMORY_ABOVE = 1 << 30  # working sets below 1 GiB are never refused (and never cost a memory query)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on `device` (None: unknown there)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    return None


def check_fits_in_memory(name: str, nbytes: int, device: torch.device) -> None:
    """Refuse, before allocating, a call whose working set exceeds the device's available memory."""
    if nbytes < CHECK_MEMORY_ABOVE:
        return
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise AttentionInputError(
            f"{name} would need about {nbytes / 1e9:.1f} GB for this call (it materializes the score matrix), "
            f"more than the {free / 1e9:.1f} GB available on {device}: use a smaller batch or sequence, or a "
            "flash-style backend (sdpa, chunked)"
        )


def score_matrix_bytes(q: torch.Tensor, k: torch.Tensor, copies: int = 2) -> int:
    """Working set of a backend that materializes (B, H, Tq, Tk) scores: `copies` of them (scores, weights)."""
    B, H, Tq, _ = q.shape
    return copies * B * H * Tq * k.size(-2) * q.element_size()


def features_in_use(
    q, k, v=None, *, window=None, mask_mod=None, document_ids=None, softcap=None, score_mod=None, alibi_slopes=None,
    sinks=None, return_lse=False, descale=None
) -> list[str]:  # fmt: skip
    """The optional features (FEATURES) a call with these arguments needs (value_dim only when v is given)."""
    value_dim = v is not None and v.size(-1) != k.size(-1)
    shapes = {"gqa": q.size(1) != k.size(1), "value_dim": value_dim, "return_lse": return_lse, "fp8": q.dtype == FP8}
    given = {"window": window, "mask_mod": mask_mod, "document_ids": document_ids, "softcap": softcap}
    given |= {"score_mod": score_mod, "alibi": alibi_slopes, "sinks": sinks}
    return [name for name, on in shapes.items() if on] + [name for name, value in given.items() if value is not None]


def check_inputs(
    q,
    k,
    v,
    *,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
    window=None,
    mask_mod=None,
    document_ids=None,
    softcap=None,
    score_mod=None,
    alibi_slopes=None,
    sinks=None,
    return_lse: bool = False,
    descale=None,
) -> None:
    """Raise AttentionInputError naming the first broken rule of the backend contract."""
    if not isinstance(causal, bool):  # a string such as 'no' is truthy: it would silently mean causal
        raise AttentionInputError(f"causal must be True or False, got {causal!r}")
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
    if not (0.0 <= dropout_p < 1.0):
        raise AttentionInputError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not (_is_real(scale) and math.isfinite(scale) and scale > 0):
        raise AttentionInputError(f"scale must be a positive finite number or None, got {scale!r}")
    _check_features(q, k, causal, window, mask_mod, document_ids, softcap)
    _check_score_features(q, score_mod, alibi_slopes, sinks, return_lse)
    _check_descale(q, k, descale)


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
