"""chunked with the contract's features on small key blocks, and its block skipping (work ~ visible pairs)."""

from __future__ import annotations

import functools

import pytest
import torch
from attnbench import FEATURES, Backend, Scores, Visibility, chunked
from attnbench.conformance.properties import PROPERTIES, run_property
from hypothesis import Phase

SMALL_BLOCK = Backend(
    "chunked_block3",
    functools.partial(chunked.chunked_attention, block=3),
    "chunked with 3-key blocks: the suite's T <= 24 spans many blocks, ragged tails and skipped blocks",
    features=frozenset(FEATURES),
)


@pytest.mark.parametrize("prop", ["feature_equiv", "hidden_keys", "docs_alone", "gqa_repeat", "window_wide"])
def test_small_blocks_pass_the_feature_properties(prop):
    run_property(
        PROPERTIES[prop],
        SMALL_BLOCK,
        "cpu",
        [torch.float32, torch.float64],
        max_examples=40,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
    )


def _visited_pairs(plan: chunked.Plan) -> int:
    """(query, key) pairs whose scores the plan computes: the work of forward and backward."""
    return sum((i1 - i0) * (j1 - j0) for _, j0, j1, i0, i1 in plan.spans)


def _plan(t, block, **kw):
    return chunked.Plan(t, t, 1, 1, 1, block, Visibility(True, **kw), Scores())


def test_window_work_grows_linearly_in_t():
    block, window = 64, 256
    for t in (1024, 2048, 4096, 8192):
        visited = _visited_pairs(_plan(t, block, window=window))
        assert visited <= t * (block + window), f"T={t}: {visited} pairs computed for a window of {window}"
        visible = sum(min(p + 1, window) for p in range(t))
        assert visited >= visible  # every visible pair is computed
    ratio = _visited_pairs(_plan(8192, block, window=window)) / _visited_pairs(_plan(4096, block, window=window))
    assert ratio <= 2.05, f"doubling T multiplied the work by {ratio:.2f}"
    assert _visited_pairs(_plan(8192, block)) > 8192**2 / 2  # without a window: the causal triangle


def test_documents_skip_the_blocks_of_other_documents():
    t, block, doc_len = 1024, 32, 64
    docs = (torch.arange(t) // doc_len)[None]  # (1, T): 16 packed documents
    visited = _visited_pairs(_plan(t, block, document_ids=docs))
    assert visited <= t * doc_len, f"{visited} pairs computed for {t // doc_len} documents of {doc_len}"
    ids = (torch.arange(t) // doc_len % 2)[None]  # two interleaved documents: ids repeat, nothing is skippable
    assert _visited_pairs(_plan(t, block, document_ids=ids)) >= t * (t - doc_len) // 2
