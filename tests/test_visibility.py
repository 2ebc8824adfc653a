"""attnbench.Visibility, the one place the contract's masks are written, against the float64 reference's own
formula (masked_reference.reference_visible, tril/triu offsets): its dense mask, its visible-pair count, the query
rows it lets a key block skip, and flex's mask_mod built from it. A rule off by one key is caught the same way."""

import torch
from attnbench import Visibility
from attnbench.conformance.features import MASK_MODS, feature_cases
from attnbench.conformance.masked_reference import reference_visible
from hypothesis import given, settings
from hypothesis import strategies as st


def _reference(case) -> torch.Tensor:
    b = case.base
    return reference_visible(b.B, b.H, b.Tq, b.Tk, b.causal, case.features("cpu"), "cpu")  # (B, Hq, Tq, Tk)


def _visibility(case) -> Visibility:
    f = case.features("cpu")
    return Visibility(case.base.causal, f.window, f.mask_mod, f.document_ids)


def _dense(vis: Visibility, case) -> torch.Tensor:
    b = case.base
    mask = vis.dense(b.B, b.H, b.Tq, b.Tk, "cpu")
    return torch.ones(b.B, b.H, b.Tq, b.Tk, dtype=torch.bool) if mask is None else mask.expand(b.B, b.H, b.Tq, b.Tk)


class OneKeyTooMany(Visibility):
    """The window rule off by one (flash-attn's window_size_left passed as the window): p - w .. p."""

    def sees(self, b, h, pos, key):
        vis = super().sees(b, h, pos, key)
        return vis if self.window is None else vis | ((key == pos - self.window) & (key >= 0))


cases = feature_cases([torch.float32]).map(lambda c: c.with_(softcap=None, score=None, alibi=False, sinks=False))


@settings(max_examples=60, deadline=None)
@given(case=cases)
def test_dense_mask_and_visible_pairs_match_the_reference(case):
    # Pass criterion: the same (B, Hq, Tq, Tk) mask as the reference, and visible_pairs its sum (closed form or not).
    b, vis, ref = case.base, _visibility(case), _reference(case)
    assert torch.equal(_dense(vis, case), ref), case
    assert vis.visible_pairs(b.B, b.H, b.Tq, b.Tk) == int(ref.sum()), case


@settings(max_examples=60, deadline=None)
@given(case=cases.filter(lambda c: c.window is not None), block=st.sampled_from([1, 3, 16, 64]))
def test_query_rows_are_exactly_the_rows_that_see_a_key_block(case, block):
    # Pass criterion (causal and window only, what query_rows answers): rows outside [i0, i1) see no key of the
    # block, and rows inside see at least one; so skipping outside loses nothing, and nothing inside is wasted.
    b = case.base
    vis = Visibility(b.causal, case.window)
    ref = _reference(case.with_(docs=None, mask=None))[0, 0]  # (Tq, Tk)
    for j0 in range(0, b.Tk, block):
        j1 = min(j0 + block, b.Tk)
        i0, i1 = vis.query_rows(j0, j1, b.Tq, b.Tk)
        seeing = ref[:, j0:j1].any(-1).nonzero().flatten().tolist()
        assert seeing == list(range(max(i0, 0), max(i1, i0))), (j0, j1, i0, i1, case)


def test_flex_mask_mod_is_the_same_rule():
    from attnbench import flex

    docs = torch.tensor([[0] * 10 + [1] * 20 + [2] * 10])  # (B, Tk)
    for causal, window, mask in [(True, 9, None), (False, None, "head_stripes"), (True, None, "empty_rows")]:
        vis = Visibility(causal, window, MASK_MODS.get(mask), docs)
        mod = flex._mask_mod(24, 40, vis)  # flex counts q_idx from 0: query i is at position 40 - 24 + i
        b, h, q, kv = torch.meshgrid(*(torch.arange(n) for n in (1, 4, 24, 40)), indexing="ij")
        assert torch.equal(mod(b, h, q, kv), vis.dense(1, 4, 24, 40, "cpu").expand(1, 4, 24, 40)), (causal, window)


@settings(max_examples=60, deadline=None)
@given(case=cases.filter(lambda c: c.window is not None and c.window < c.base.Tk))
def test_a_window_off_by_one_is_caught(case):
    # The last query (position Tk - 1 >= window) sees key Tk - 1 - window under the wrong rule only.
    case = case.with_(docs=None, mask=None)
    wrong = OneKeyTooMany(causal=True, window=case.window)
    assert not torch.equal(_dense(wrong, case), _reference(case)), case


@settings(max_examples=40, deadline=None)
@given(case=cases.filter(lambda c: c.base.causal))
def test_the_masks_compose_by_and(case):
    # Pass criterion: the call's mask is the AND of each mask given alone (causal, window, documents, mask_mod),
    # so a feature added to the value narrows what a query sees and never widens it.
    f = case.features("cpu")
    alone = [
        Visibility(True, f.window),
        Visibility(True, mask_mod=f.mask_mod),
        Visibility(True, document_ids=f.document_ids),
    ]
    expected = torch.stack([_dense(v, case) for v in alone]).all(0)  # (B, Hq, Tq, Tk)
    assert torch.equal(_dense(_visibility(case), case), expected), case
