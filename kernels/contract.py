"""The backend contract: the Backend that declares what it computes, its declared departures, and the checks every
call gets.

What one call computes, its keywords and their checks: call.py (`AttentionCall`). Every call through the registry
is checked: the inputs (`AttentionCall.check`), the backend's own refusal for this device, dtype and the features
the call needs (`Backend.why_not`), its working set against the available memory (backends that materialize the
score matrix declare it), and the output (shape, dtype, device), with an error naming the backend.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .call import FEATURES, FP8, AttentionCall
from .errors import AttentionInputError, BackendOutputError

# a backend's function: fn(q, k, v, **AttentionCall(...).keywords()) -> out, or (out, lse) with return_lse=True;
# it may take only the keywords of the features it declares (causal, dropout_p and scale always)
AttendFn = Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


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

    def __call__(self, q, k, v, /, **keywords) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attention of q, k, v with the contract's keywords (call.AttentionCall's fields), checked before and after."""
        call = AttentionCall.of(keywords)
        call.check(q, k, v)
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        dropout = call.dropout_p > 0
        if why := self.why_not(q.device, q.dtype, features=call.features(q, k, v), dropout=dropout, backward=backward):
            raise AttentionInputError(f"{self.name} {why}")  # refused, never a silently detached or wrong output
        if self.working_set is not None:
            check_fits_in_memory(self.name, self.working_set(q, k), q.device)
        out = self.fn(q, k, v, **call.keywords())  # an old-style fn never sees a keyword it was not given
        if not call.return_lse:
            check_output(self.name, out, q, v)
            return out
        if not (isinstance(out, tuple) and len(out) == 2):
            raise BackendOutputError(f"backend {self.name!r} was asked for return_lse=True and returned no (out, lse)")
        check_output(self.name, out[0], q, v)
        check_lse(self.name, out[1], q)
        return out


def check_output(name: str, out, q: torch.Tensor, v: torch.Tensor) -> None:
    """Raise BackendOutputError unless `out` is what the contract promises: (B, Hq, Tq, Dv), on q's device."""
    _check_returned(name, "an output", out, (*q.shape[:-1], v.size(-1)), output_dtype(q.dtype), q.device)


def check_lse(name: str, lse, q: torch.Tensor) -> None:
    """Raise BackendOutputError unless `lse` is (B, Hq, Tq) in lse_dtype(q.dtype), on q's device."""
    _check_returned(name, "an lse", lse, tuple(q.shape[:-1]), lse_dtype(q.dtype), q.device)


def _check_returned(name: str, what: str, t, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise BackendOutputError(f"backend {name!r} returned {what} of type {type(t).__name__}, not a torch.Tensor")
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise BackendOutputError(
            f"backend {name!r} returned {what} of shape {tuple(t.shape)} {t.dtype} on {t.device}; the contract "
            f"needs shape {tuple(shape)} {dtype} on {device}"
        )


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The output's dtype for inputs of `dtype`: the same, but bfloat16 for fp8 inputs (FlashAttention-3's)."""
    return torch.bfloat16 if dtype == FP8 else dtype


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a returned lse: float64 for float64 inputs, else float32 (what flash kernels return)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
