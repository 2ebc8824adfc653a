"""`attnbench probe`: which convention a kernel follows, where attention kernels differ, with the evidence.

Each probe runs the kernel on small inputs whose answer under every candidate convention is known exactly, and
names the candidate the output matches (its max |out - candidate| within the dtype's tolerance) or "unknown",
with the distance to every candidate:
- causal alignment (Tq < Tk): q = 0 makes every visible key weigh the same and v = identity makes the output the
  weights: bottom-right (the contract), top-left, no mask; the keys each row sees are printed too.
- window edge (declared window): the same inputs, window 3: the contract's 3 keys ending at the query, one more,
  one fewer, or 3 keys before the query (the current token excluded).
- default scale: random q, k with D = 16: 1/sqrt(D) (the contract), 1, 1/D, 1/sqrt(H * D) (the model width).
- GQA mapping (declared gqa): q = 0 and kv head g's values all g + 1, so each query head outputs the number of
  the kv head it reads: h // (Hq // Hkv) (the contract) or h % Hkv (kv heads tiled).
- empty rows (declared mask_mod, the one feature that can hide every key): zeros (the contract), mean(v), NaN.
- dtype computed: float64 and float32 inputs; the error from float64 against each dtype's rounding noise (the
  narrowest dtype whose noise covers it).
- NaN: the NaN contract's probe (nan_contract.py); a departure the backend declares is shown as declared.
- LSE (a kernel returning (out, lse)): natural log or base 2, (B, H, Tq) or (B, Tq, H); the contract has no
  LSE, and flash-attention's softmax_lse (natural log, (B, H, Tq)) is taken as the reference.
A departure comes with the adapter lines that fix it, or the declaration that states it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from attnbench import Backend

from .masked_reference import Features, masked_attention_formula
from .nan_contract import nan_violations, showcase
from .reference import abs_logit_bound, rounding_noise

UNKNOWN = "unknown"
PROBE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # the first the kernel runs is used
NOISE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)  # by increasing rounding noise


@dataclass(frozen=True)
class Finding:
    convention: str
    found: str  # a candidate's name, UNKNOWN, or "n/a: why"
    contract: str
    evidence: str
    fix: str = ""  # the adapter lines (or the declaration) when found departs from the contract
    declared: bool = False  # a departure the backend declares (Backend.nan_departure, empty_row_departure, ...)

    @property
    def status(self) -> str:
        if self.found.startswith("n/a"):
            return "n/a"
        if self.found == self.contract:
            return "follows"
        return "declared" if self.declared else "DEPARTS"


def distance(out: torch.Tensor, candidate: torch.Tensor) -> float:
    """max |out - candidate| in float64; NaN against NaN is 0 apart, NaN against a number infinitely far."""
    a, b = out.double(), candidate.double().to(out.device)
    if a.shape != b.shape:
        return math.inf
    diff = (a - b).abs().masked_fill(a.isnan() & b.isnan(), 0.0)
    return float(diff.nan_to_num(nan=math.inf).max())


def identify(convention, out, candidates: dict, contract: str, fixes: dict, tol: float, note: str = "") -> Finding:
    """The candidate `out` matches (within tol), or UNKNOWN; the evidence lists the distance to each."""
    far = {name: distance(out, c) for name, c in candidates.items()}
    best = min(far, key=far.get)
    found = best if far[best] <= tol else UNKNOWN
    evidence = ", ".join(f"{name} {d:.2g}" for name, d in far.items()) + (f"; {note}" if note else "")
    fix = "" if found == contract else fixes.get(found, fixes.get(UNKNOWN, ""))
    return Finding(convention, found, contract, evidence, fix)


def _tolerance(dtype: torch.dtype) -> float:
    """sqrt(eps): far above the rounding of these O(1) outputs, far below the gaps between candidates (>= 0.1)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _uniform(visible: torch.Tensor) -> torch.Tensor:
    """(..., Tq, Tk) bool -> each row's weights when every visible key weighs the same (an empty row: zeros)."""
    v = visible.double()[None, None]  # (1, 1, Tq, Tk)
    return v / v.sum(-1, keepdim=True).clamp_min(1.0)


def _weights_probe(tq: int, tk: int, dtype, device) -> tuple[torch.Tensor, ...]:
    """q = 0 (every visible key weighs the same), v = identity (the output is the weights): (1, 1, T, Tk) each."""
    q = torch.zeros(1, 1, tq, tk, dtype=dtype, device=device)
    k = torch.randn(1, 1, tk, tk, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device, dtype)
    v = torch.eye(tk, dtype=dtype, device=device)[None, None]
    return q, k, v


def _keys_seen(out: torch.Tensor) -> str:
    return "keys seen per row " + str((out[0, 0] > 1e-3).sum(-1).tolist())


ALIGN_FIX = (
    "for Tq < Tk give the kernel the contract's mask instead of its causal flag:\n"
    "    mask = attnbench.bottom_right_causal_mask(q.size(-2), k.size(-2), q.device)  # (Tq, Tk), True = attend"
)


def probe_alignment(backend: Backend, dtype, device) -> Finding:
    tq, tk = 3, 7
    q, k, v = _weights_probe(tq, tk, dtype, device)
    out = backend(q, k, v, causal=True)
    rows, keys = torch.arange(tq)[:, None], torch.arange(tk)[None, :]
    candidates = {
        "bottom-right": _uniform(keys <= rows + tk - tq),
        "top-left": _uniform(keys <= rows),
        "no mask": _uniform(torch.ones(tq, tk, dtype=torch.bool)),
    }
    fixes = {UNKNOWN: ALIGN_FIX, "top-left": ALIGN_FIX, "no mask": "the kernel ignores causal: " + ALIGN_FIX}
    return identify(
        "causal alignment (Tq < Tk)", out, candidates, "bottom-right", fixes, _tolerance(dtype), _keys_seen(out)
    )


def probe_window(backend: Backend, dtype, device) -> Finding:
    t, w = 8, 3
    q, k, v = _weights_probe(t, t, dtype, device)
    out = backend(q, k, v, causal=True, window=w)
    pos, keys = torch.arange(t)[:, None], torch.arange(t)[None, :]
    candidates = {
        f"{w} keys ending at the query": _uniform((keys <= pos) & (keys > pos - w)),
        f"{w + 1} keys": _uniform((keys <= pos) & (keys > pos - w - 1)),
        f"{w - 1} keys": _uniform((keys <= pos) & (keys > pos - w + 1)),
        f"{w} keys before the query (itself excluded)": _uniform((keys < pos) & (keys >= pos - w)),
    }
    fixes = {
        f"{w + 1} keys": "the kernel counts the query apart (flash-attn's window_size_left): pass window - 1",
        f"{w - 1} keys": "pass window + 1",
        UNKNOWN: "give the kernel the contract's mask instead of its window:\n"
        "    mask = attnbench.visible_mask(q, k, causal=True, window=window)  # (1, 1, Tq, Tk), True = attend",
    }
    fixes[f"{w} keys before the query (itself excluded)"] = fixes[UNKNOWN]
    contract = f"{w} keys ending at the query"
    return identify(f"window edge (window={w})", out, candidates, contract, fixes, _tolerance(dtype), _keys_seen(out))


def _random(shape, seed: int, dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def probe_scale(backend: Backend, dtype, device) -> Finding:
    h, t, d = 2, 4, 16
    q, k, v = (_random((1, h, t, d), seed, dtype, device) for seed in (1, 2, 3))
    out = backend(q, k, v, causal=False)
    scales = {"1/sqrt(D)": d**-0.5, "1": 1.0, "1/D": 1.0 / d, "1/sqrt(H*D)": (h * d) ** -0.5}
    q64, k64, v64 = q.double(), k.double(), v.double()
    candidates = {
        name: masked_attention_formula(q64, k64, v64, causal=False, scale=s, f=Features()) for name, s in scales.items()
    }
    fix = "pass the scale explicitly: scale = attnbench.default_scale(q, scale)  # 1/sqrt(D) when None"
    return identify("default scale", out, candidates, "1/sqrt(D)", dict.fromkeys(scales, fix), _tolerance(dtype))


def probe_gqa(backend: Backend, dtype, device) -> Finding:
    hq, hkv, t = 4, 2, 4
    q = torch.zeros(1, hq, t, 2, dtype=dtype, device=device)
    k = _random((1, hkv, t, 2), 4, dtype, device)
    v = (torch.arange(hkv, dtype=dtype, device=device) + 1)[None, :, None, None].expand(1, hkv, t, 2)  # head g: g + 1
    out = backend(q, k, v.contiguous(), causal=False)  # (1, Hq, T, 2): the number of the kv head each head read
    heads = torch.arange(hq, dtype=torch.float64)[None, :, None, None]
    candidates = {"h // (Hq // Hkv)": heads // (hq // hkv) + 1, "h % Hkv": heads % hkv + 1}
    candidates = {name: c.expand(1, hq, t, 2) for name, c in candidates.items()}
    fix = "give the kernel kv heads repeated per group: k, v = (x.repeat_interleave(Hq // Hkv, dim=1) for x in (k, v))"
    note = "kv head read per query head " + str((out[0, :, 0, 0].double().round() - 1).long().tolist())
    return identify(
        "GQA head mapping", out, candidates, "h // (Hq // Hkv)", {UNKNOWN: fix, "h % Hkv": fix}, _tolerance(dtype), note
    )


EMPTY_ROW_OUTPUT = {"mean(v)": "mean_v", "NaN": "nan"}  # a probe candidate -> its EmptyRowDeparture output


def _hide_row_0(b, h, q_idx, kv_idx):
    return (q_idx != 0) & (kv_idx >= 0)  # query row 0 sees no key


def probe_empty_rows(backend: Backend, dtype, device) -> Finding:
    t, d = 4, 4
    q, k, v = (_random((1, 1, t, d), seed, dtype, device) for seed in (5, 6, 7))
    out = backend(q, k, v, causal=False, mask_mod=_hide_row_0)[..., :1, :]  # (1, 1, 1, D): the empty row
    candidates = {"zeros": torch.zeros(1, 1, 1, d), "mean(v)": v.double().mean(-2, keepdim=True)}
    candidates["NaN"] = torch.full((1, 1, 1, d), math.nan)
    fix = (
        "zero the rows that see no key:\n    visible = attnbench.visible_mask(q, k, causal=causal, mask_mod=mask_mod)\n"
        "    out = out.masked_fill(~visible.any(-1, keepdim=True), 0.0)\n  or, if that is what the kernel is for, "
        "declare it: empty_row_departure=attnbench.EmptyRowDeparture('<why>', outputs={{'{}'}})"
    )
    fixes = {name: fix.format(EMPTY_ROW_OUTPUT[name]) for name in EMPTY_ROW_OUTPUT} | {UNKNOWN: fix.split("\n  or")[0]}
    found = identify("empty rows (a row that sees no key)", out, candidates, "zeros", fixes, _tolerance(dtype))
    declared = (
        backend.empty_row_departure is not None
        and EMPTY_ROW_OUTPUT.get(found.found) in backend.empty_row_departure.outputs
    )
    return dataclasses.replace(found, fix="", declared=True) if declared else found


def probe_computed_dtype(backend: Backend, given: torch.dtype, device) -> Finding:
    convention = f"dtype computed ({str(given).removeprefix('torch.')} given)"
    if reason := backend.why_unsupported(device, given):
        return Finding(convention, f"n/a: {reason}", "", "")
    t, d = 16, 8  # 1/sqrt(8) is not a float32: a scale rounded to float32 shows
    q, k, v = (_random((1, 2, t, d), seed, given, device) for seed in (8, 9, 10))
    scale = d**-0.5  # given explicitly: this probe is about precision, not about the default scale
    out = backend(q, k, v, causal=True, scale=scale)
    ref = masked_attention_formula(q.double(), k.double(), v.double(), causal=True, scale=scale, f=Features())
    err = distance(out, ref)
    a = abs_logit_bound(q, k, scale)
    noise = {dt: rounding_noise(dt, float(v.abs().max()), a, n_terms=t) for dt in NOISE_DTYPES}
    found = next((str(dt).removeprefix("torch.") for dt in NOISE_DTYPES if err <= noise[dt]), UNKNOWN)
    evidence = f"max|out - float64| {err:.2g}; rounding noise " + ", ".join(
        f"{str(dt).removeprefix('torch.')} {n:.2g}" for dt, n in noise.items()
    )
    departure = backend.precision_departure
    used = departure.dtype_computed(given) if departure is not None else given
    contract = str(given).removeprefix("torch.")
    declared = found not in (UNKNOWN, contract) and err <= noise[used]  # above its own noise, within the declared
    fix = (
        ""
        if found == contract or declared
        else (
            f"declare it: precision_departure=attnbench.PrecisionDeparture('<why>', {{torch.{contract}: "
            f"torch.{found}}}), or declare {contract} unsupported (unsupported_reason: 'computes in {found}'), or "
            f"do the {contract} parts in torch (onnx_attention applies the scale to q in float64 and passes scale=1)"
        )
    )
    return Finding(convention, found, contract, evidence, fix, declared)


def probe_nan(backend: Backend, dtype, device) -> Finding:
    found = nan_violations(backend, showcase(dtype), device)
    if not found:
        return Finding("NaN in q, key, value", "contract", "contract", "no row the NaN cannot reach changed")
    kinds = {kind: sorted({v.where for v in found if v.kind == kind}) for kind in ("spreads", "hides")}
    what = "; ".join(f"{kind} a NaN in {', '.join(w)}" for kind, w in kinds.items() if w)
    declared = backend.nan_departure is not None and all(backend.nan_departure.excuses(v.kind, v.where) for v in found)
    sets = ", ".join(f"{kind}={{{', '.join(map(repr, w))}}}" for kind, w in kinds.items() if w)
    fix = f"declare it: nan_departure=attnbench.NanDeparture('<why>', {sets})"
    evidence = "; ".join(v.message.split(" [")[0] + f" (NaN in {v.where})" for v in found)
    return Finding("NaN in q, key, value", what, "contract", evidence, "" if declared else fix, declared)


LSE_CONTRACT = "natural log, (B, H, Tq)"


def probe_lse(fn: Callable, dtype, device) -> Finding:
    h, tq, tk, d = 2, 3, 5, 4
    q, k, v = (_random((1, h, t, d), seed, dtype, device) for seed, t in ((11, tq), (12, tk), (13, tk)))
    result = fn(q, k, v, causal=False, dropout_p=0.0, scale=None)
    if not isinstance(result, tuple):
        return Finding("LSE base and layout", "n/a: returns no LSE (the contract has none)", LSE_CONTRACT, "")
    lse = (q.double() @ k.double().transpose(-2, -1) * d**-0.5).logsumexp(-1)  # (1, H, Tq)
    candidates = {
        LSE_CONTRACT: lse,
        "base 2, (B, H, Tq)": lse / math.log(2),
        "natural log, (B, Tq, H)": lse.transpose(1, 2),
        "base 2, (B, Tq, H)": lse.transpose(1, 2) / math.log(2),
    }
    fixes = {
        "base 2, (B, H, Tq)": "lse = lse * math.log(2)",
        "natural log, (B, Tq, H)": "lse = lse.transpose(1, 2)",
        "base 2, (B, Tq, H)": "lse = lse.transpose(1, 2) * math.log(2)",
    }
    note = f"shape {tuple(result[1].shape)}"
    return identify("LSE base and layout", result[1], candidates, LSE_CONTRACT, fixes, _tolerance(dtype), note)


def _output_only(fn: Callable) -> Callable:
    """fn with the output alone where it returns (out, lse, ...): the contract's other checks need a tensor."""

    @functools.wraps(fn)
    def out_only(*args, **kwargs):
        result = fn(*args, **kwargs)
        return result[0] if isinstance(result, tuple) else result

    return out_only


def native_call(backend: Backend) -> Backend:
    """The backend with `native=True` on every call (a foreign adapter's kernel in its own convention)."""
    if "native" not in inspect.signature(backend.fn).parameters:
        raise ValueError(f"{backend.name} takes no native= argument (only the foreign adapters do)")
    return dataclasses.replace(backend, fn=functools.partial(backend.fn, native=True), name=f"{backend.name} (native)")


FEATURE_PROBES = (("window", probe_window), ("gqa", probe_gqa), ("mask_mod", probe_empty_rows))


def probe(backend: Backend, device: str = "cpu") -> list[Finding]:
    """Every convention of `backend` on `device`, a Finding each."""
    dtype = next((dt for dt in PROBE_DTYPES if backend.supports(device, dt)), None)
    if dtype is None:
        raise ValueError(
            f"{backend.name} runs no floating dtype on {device}: {backend.why_unsupported(device, torch.float32)}"
        )
    wrapped = dataclasses.replace(backend, fn=_output_only(backend.fn))
    runs: list[tuple[str, Callable[[], Finding]]] = [
        ("causal alignment (Tq < Tk)", lambda: probe_alignment(wrapped, dtype, device)),
        ("default scale", lambda: probe_scale(wrapped, dtype, device)),
    ]
    for feature, fn in FEATURE_PROBES:
        name = {"window": "window edge", "gqa": "GQA head mapping", "mask_mod": "empty rows"}[feature]
        if reason := backend.why_no_feature(feature, device):
            runs.append((name, functools.partial(Finding, name, f"n/a: {reason}", "", "")))
        else:
            runs.append((name, functools.partial(fn, wrapped, dtype, device)))
    runs += [
        (f"dtype computed ({given})", functools.partial(probe_computed_dtype, wrapped, given, device))
        for given in (torch.float64, torch.float32)
    ]
    runs.append(("NaN in q, key, value", lambda: probe_nan(wrapped, dtype, device)))
    runs.append(("LSE base and layout", lambda: probe_lse(backend.fn, dtype, device)))
    findings = []
    for name, run in runs:
        try:
            findings.append(run())
        except Exception as e:  # noqa: BLE001  a kernel that crashes on a probe's input departs there
            findings.append(Finding(name, f"error: {type(e).__name__}: {e}".splitlines()[0], "no error", ""))
    return findings


def render(backend: Backend, device: str, findings: list[Finding]) -> str:
    """The table of conventions (found, contract, status, evidence), then each departure's fix."""
    rows = [("convention", "found", "contract", "status", "evidence (max |out - candidate| per candidate)")]
    rows += [(f.convention, f.found, f.contract, f.status, f.evidence) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"attnbench probe: {backend.name} on {device}", ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    departures = [f for f in findings if f.status == "DEPARTS"]
    if departures:
        lines += ["", "departures from the contract, and the adapter lines that fix them:"]
        lines += [f"- {f.convention}: {f.found}\n    {f.fix}" for f in departures]
    declared = [f for f in findings if f.status == "declared"]
    lines += [f"declared: {f.convention}: {f.found}" for f in declared]
    return "\n".join(lines)


def probe_command(spec: str, device: str, native: bool) -> int:
    """`attnbench probe SPEC`: print the table; 0 when every convention follows the contract (or a departure the
    backend declares), 1 when one departs. Bad input (unknown spec, a device this machine lacks) raises ValueError
    or UnknownBackendError, which the command line turns into one line and exit 2."""
    import os
    import sys

    from attnbench import get_backend

    sys.path.insert(0, os.getcwd())  # a module:function spec may name a module of the current directory
    backend = get_backend(spec)
    backend = native_call(backend) if native else backend
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    findings = probe(backend, device)
    print(render(backend, device, findings))
    return 1 if any(f.status == "DEPARTS" for f in findings) else 0
