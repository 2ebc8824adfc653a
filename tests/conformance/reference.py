"""The float64 reference, the naive formula in the test dtype, and the pass rule every comparison uses.

Shapes (the backend contract of attnbench.registry):

    q: (B, H, Tq, D); k, v: (B, H, Tk, D) with Tq <= Tk; out: (B, H, Tq, D)

The causal mask is aligned to the bottom right: query i sits at absolute position Tk - Tq + i and sees keys
0 .. Tk - Tq + i. The mask here is built independently of attnbench.bottom_right_causal_mask (tril with an
offset rather than comparing aranges) so that a bug there cannot hide in the oracle too.

Pass rule (after flash-attention's tests), for the output and every gradient:

    max|out - ref64| <= 2 * max|naive_d - ref64| + atol_d

naive_d is the plain formula below run in the test dtype d, so the bound is "no worse than twice what the
textbook formula loses in that dtype"; atol_d is the rounding noise of d (see `rounding_noise`), which keeps
the bound from collapsing to zero where naive_d happens to be exact (always in float64, where naive_d is
the reference itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def causal_mask(tq: int, tk: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (absolute position Tk - Tq + i) may see key j."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def visible_mask(tq: int, tk: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """(Tq, Tk) bool: which keys each query may attend to."""
    return causal_mask(tq, tk, device) if causal else torch.ones(tq, tk, dtype=torch.bool, device=device)


def attention_formula(q, k, v, *, causal: bool = True, scale: float | None = None, visible=None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in the inputs' own dtype: the naive formula (and, on float64, the reference).

    `visible` (Tq, Tk) bool replaces the causal mask: the row-sampled reference passes the rows it keeps."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if visible is None and causal:
        visible = causal_mask(q.size(-2), k.size(-2), q.device)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    return F.softmax(s, dim=-1) @ v  # (B, H, Tq, D)


ROW_SAMPLES = 16  # query rows the row-sampled reference keeps (all of them for Tq <= this)
TILE = 64  # the smallest tile real kernels use: rows either side of each multiple are sampled first


def sample_rows(tq: int, seed: int, n: int = ROW_SAMPLES) -> torch.Tensor:
    """(R,) sorted query rows: all when Tq <= n; else the first and last row, the rows either side of the first
    tile boundaries (63, 64, 127, 128, ...) and random rows drawn from `seed`, R <= n."""
    if tq <= n:
        return torch.arange(tq)
    edges = [r for b in range(TILE, tq, TILE) for r in (b - 1, b)][: n // 2 - 2]
    fixed = sorted({0, tq - 1, *edges})
    rest = torch.tensor([r for r in range(tq) if r not in set(fixed)])
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: n - len(fixed)]]
    return torch.cat([torch.tensor(fixed), pick]).sort().values


def keep_rows_(dout: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Zero every query row of dout outside `rows`, in place (so dout keeps its layout); returns dout."""
    off = torch.ones(dout.size(-2), dtype=torch.bool, device=dout.device)
    off[rows.to(dout.device)] = False
    dout[..., off, :] = 0
    return dout


def row_sampled_attention(q, k, v, dout, rows, *, causal: bool, scale: float | None, dtype: torch.dtype):
    """The result on query `rows` and the exact gradients for an upstream gradient nonzero only on those rows.

    Each kept row sits at its absolute position Tk - Tq + r, so causal masks and Tq < Tk stay right. With dO
    zero off `rows`, dq is zero there and dk, dv depend on the kept rows alone: the (R, Tk) sub-problem gives
    all of dq, dk and dv exactly. Returns (out[rows], dq, dk, dv), computed in `dtype` (float64: the reference;
    the test dtype: the naive formula of the pass rule)."""
    tq, tk = q.size(-2), k.size(-2)
    vis = visible_mask(tq, tk, causal, q.device)[rows.to(q.device)]  # (R, Tk)
    xs = [t.detach().to(dtype)[..., rows.to(t.device), :] if i == 0 else t.detach().to(dtype)
          for i, t in enumerate((q, k, v))]  # fmt: skip
    xs = [x.requires_grad_(True) for x in xs]  # q rows: (B, H, R, D); k, v: (B, H, Tk, D)
    out = attention_formula(*xs, scale=scale, visible=vis)  # (B, H, R, D)
    dq_rows, dk, dv = torch.autograd.grad(out, xs, dout.detach().to(dtype)[..., rows.to(dout.device), :])
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dq[..., rows.to(q.device), :] = dq_rows
    return out.detach(), dq, dk, dv


def reference_weights(q, k, *, causal: bool = True, scale: float | None = None) -> torch.Tensor:
    """The float64 attention weights P: (B, H, Tq, Tk), rows summing to 1."""
    q, k = q.double(), k.double()
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        s = s.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
    return F.softmax(s, dim=-1)


def abs_logit_bound(q, k, scale: float | None = None) -> float:
    """max_ij scale * sum_d |q_id| |k_jd|: how large a logit's rounding error can be relative to eps."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    q, k = q.detach().double().abs(), k.detach().double().abs()
    return float(((q @ k.transpose(-2, -1)) * scale).max())


def rounding_noise(dtype: torch.dtype, magnitude: float, abs_logit: float = 0.0, n_terms: int = 1) -> float:
    """atol_d: the first-order rounding noise of `dtype` on a result of size `magnitude`.

    One term per source of rounding, each eps_d * magnitude times its count, nothing tuned:
    - n_terms: a sum of n rounded products loses up to n * eps (the classic gamma_n bound); the longest
      sum in attention is over Tk keys (forward) or Tq queries (dk, dv);
    - 2: storing the result and normalising by the softmax denominator, one rounding each;
    - 2 * abs_logit: a logit s is itself rounded by a relative eps, i.e. shifted by up to eps * |s| <=
      eps * abs_logit, and a logit shift delta moves a softmax-weighted result by up to ~2 * delta * magnitude
      (d out / d s_j = p_j (v_j - out)). Large logits make attention ill-conditioned; this term says so.
    """
    return torch.finfo(dtype).eps * (n_terms + 2.0 + 2.0 * abs_logit) * magnitude


def grad_magnitudes(
    q, k, v, dout, *, causal: bool = True, scale: float | None = None, visible=None
) -> dict[str, float]:
    """Sizes of the terms each result sums (|.| of every factor), the `magnitude` for rounding_noise.

    Using the terms, not the result, matters where the result cancels to ~0 (dq with Tk = 1 is exactly 0
    in exact arithmetic but a rounded sum of terms that cancel in any dtype):
      out = P v                                 -> max |v|
      dP = dO v^T; dS = P * (dP - rowsum(P dP))  -> |dS| <= 2 P (|dO| |v|^T)
      dq = scale dS k; dk = scale dS^T q; dv = P^T dO
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    q, k, v, dout = (t.detach().double().abs() for t in (q, k, v, dout))
    vis = visible_mask(q.size(-2), k.size(-2), causal, q.device) if visible is None else visible
    P = vis.double()  # (Tq, Tk): 0 <= P_ij <= 1 where visible, 0 elsewhere
    ds = 2.0 * P * (dout @ v.transpose(-2, -1))  # (B, H, Tq, Tk)
    return {
        "out": float(v.max()),
        "dq": scale * float((ds @ k).max()),
        "dk": scale * float((ds.transpose(-2, -1) @ q).max()),
        "dv": float((P.transpose(-2, -1) @ dout).max()),
    }


@dataclass(frozen=True)
class RuleResult:
    name: str
    err: float  # max|out - ref64|
    naive_err: float  # max|naive_d - ref64|
    atol: float
    bound: float  # 2 * naive_err + atol

    @property
    def ratio(self) -> float:
        return self.err / self.bound if self.bound > 0 else (0.0 if self.err == 0 else math.inf)


def check_rule(name: str, out, ref64, naive, atol, context: str = "") -> RuleResult:
    """Assert max|out - ref64| <= 2 * max|naive - ref64| + atol; on failure name the worst element.

    `atol` is a float, or a tensor shaped like `out` where the noise differs per element (then the rule
    holds element by element).
    """
    if out.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref64.shape)} {context}")
    diff = (out.double() - ref64).abs()
    naive_diff = (naive.double() - ref64).abs()
    err = float(diff.max()) if torch.isfinite(diff).all() else math.inf  # NaN/inf anywhere fails the rule
    naive_err = float(naive_diff.max())
    bound_t = 2.0 * naive_err + (atol if torch.is_tensor(atol) else torch.tensor(float(atol), dtype=torch.float64))
    excess = torch.nan_to_num(diff - bound_t, nan=math.inf)  # > 0 where the rule fails
    flat = int(excess.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    bound = float(bound_t.expand_as(diff)[idx]) if bound_t.dim() else float(bound_t)
    if math.isinf(err) or float(excess.max()) > 0:
        a = float(atol[idx]) if torch.is_tensor(atol) and atol.dim() else float(atol)
        raise AssertionError(
            f"{name}: |out - ref64| = {float(diff[idx]):.3e} > bound {bound:.3e} = 2 * max|naive - ref64| "
            f"({naive_err:.3e}) + atol ({a:.3e}) at worst element {idx}: out={float(out[idx]):.6e} "
            f"ref64={float(ref64[idx]):.6e} naive={float(naive[idx]):.6e} (|naive - ref64| there "
            f"{float(naive_diff[idx]):.3e}); shape {tuple(out.shape)}, dtype {out.dtype} {context}"
        )
    if bound_t.dim():  # report the element closest to failing
        ratio = diff / bound_t.clamp_min(1e-300)
        flat = int(ratio.argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        err, bound = float(diff[idx]), float(bound_t[idx])
    return RuleResult(name, err, naive_err, float(bound - 2.0 * naive_err), bound)
