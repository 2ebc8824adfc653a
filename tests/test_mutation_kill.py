"""Mutation kill test: every deliberately broken backend must be caught by the property designed to catch it.

Each mutant names that property (KILLED_BY) and the default run checks it alone, on CPU in the dtypes the
property draws, with its fixed kernel-size examples and a small fixed number of derandomized examples, no
shrinking: seconds a mutant. `pytest tests/test_mutation_kill.py --full-kill-table` runs every property against
every mutant (about 4 minutes on 2 cores) and requires the named one among those that kill it. The kill table
(mutant x property) is printed in pytest's terminal summary (tests/conftest.py assembles it from the test
reports, so it is complete under pytest-xdist too):
  x = killed: a pass rule failed or the contract's output check refused the output (the property caught it),
  E = an error in the mutant's code (never counted as a kill: a mutant with a stale signature proves nothing),
  . = survived,
  - = not applicable (the property needs a feature the mutant does not declare), blank = not run.
"""

from __future__ import annotations

import json

import pytest
import torch
from attnbench import Backend, BackendOutputError
from attnbench.conformance.core import missing_feature
from attnbench.conformance.properties import PROPERTIES, run_property
from hypothesis import Phase
from mutants import CATALOGUE, KILL_ROW, Mutant
from mutants_determinism import MUTANTS as DETERMINISM
from mutants_features import MUTANTS as FEATURE_MUTANTS
from mutants_fp8 import MUTANTS as FP8_MUTANTS
from mutants_global_state import MUTANTS as GLOBAL_STATE
from mutants_kernel_scale import MUTANTS as KERNEL_SCALE
from mutants_online_softmax import MUTANTS as ONLINE_SOFTMAX
from mutants_scores import MUTANTS as SCORE_MUTANTS
from mutants_serving import MUTANTS as SERVING

KILL_EXAMPLES = 8  # drawn examples per (mutant, property), after the property's fixed kernel-size examples

KILLED_BY = {  # mutant -> the property designed to catch it (the full table shows every other that does too)
    "no_causal_mask": "causal_future",
    "mask_sees_next": "causal_future",
    "mask_hides_self": "equivalence",
    "scale_model_width": "equivalence",
    "softmax_wrong_axis": "equivalence",
    "dropout_in_eval": "dropout_off",
    "top_left_causal": "chunked_prefill",
    "heads_no_transpose": "equivalence",
    "no_scale": "equivalence",
    "ignores_scale_arg": "explicit_scale",
    "mask_after_softmax": "causal_future",
    "finite_mask_fill": "dropout_mean",
    "no_max_subtraction": "huge_logits",
    "online_no_rescale": "equivalence",
    "online_block_max": "equivalence",
    "online_drops_tail": "equivalence",
    "online_diag_unmasked": "causal_future",
    "online_lse_without_max": "equivalence",
    "ragged_tail_nan_bwd": "equivalence",
    "contiguous_dout": "equivalence",
    "nondeterministic_dq": "deterministic",
    "head_dim_256": "equivalence",
    "grid_programs": "equivalence",
    "split_kv_combine": "decode_chain",
    "causal_tiles_top_left": "chunked_prefill",
    "scales_q_in_place": "inputs_unchanged",
    "fp32_output": "output_contract",
    "stale_mask_cache": "call_independence",
    "gqa_tiled_heads": "gqa_repeat",
    "gqa_dk_first_head": "gqa_repeat",
    "window_one_extra": "hidden_keys",
    "window_one_short": "window_wide",
    "window_top_left": "hidden_keys",
    "docs_shifted_boundary": "docs_alone",
    "docs_ignored_when_causal": "docs_alone",
    "mask_mod_relative_q": "mask_mod_causal",
    "mask_mod_kv_head": "mask_mod_heads",
    "softcap_after_mask": "hidden_keys",
    "softcap_no_rescale": "softcap_huge",
    "empty_row_nan": "empty_rows",
    "empty_row_uniform": "empty_rows",
    "split_kv_by_batch": "batch_invariance",
    "racing_atomics": "repeatable",
    "stale_block_table_tail": "paged_poison",
    "zero_length_nan": "varlen_empty",
    "large_page_off_by_one": "paged_poison",
    "cu_seqlens_off_by_one": "varlen_alone",
    "varlen_top_left": "varlen_alone",
    "shared_page_grad_overwritten": "paged_contiguous",
    "seeds_global_rng": "global_state",
    "sets_default_dtype": "global_state",
    "enables_deterministic": "global_state",
    "pins_one_thread": "global_state",
    "sink_no_grad": "feature_equiv",
    "sink_bwd_without_sink": "feature_equiv",
    "sink_grad_ignores_dlse": "feature_equiv",
    "lse_base2": "lse_merge",
    "lse_bthd_layout": "feature_equiv",
    "lse_unscaled": "feature_equiv",
    "lse_empty_row_zero": "lse_merge",
    "mla_scale_from_v": "feature_equiv",
    "alibi_top_left": "feature_equiv",
    "score_mod_relative_q": "feature_equiv",
    **dict.fromkeys([m.name for m in FP8_MUTANTS], "fp8_equivalence"),
}


def all_mutants() -> list[Mutant]:
    return (
        CATALOGUE
        + ONLINE_SOFTMAX
        + KERNEL_SCALE
        + FEATURE_MUTANTS
        + SCORE_MUTANTS
        + FP8_MUTANTS
        + DETERMINISM
        + SERVING
        + GLOBAL_STATE
    )


def _verdict(prop_name: str, backend: Backend) -> str:
    prop = PROPERTIES[prop_name]
    if missing_feature(prop, backend, "cpu"):
        return "-"
    dtypes = [torch.float32] if prop.level == "model" else list(prop.dtypes or (torch.float32, torch.float64))
    try:
        run_property(
            prop,
            backend,
            "cpu",
            dtypes,
            max_examples=KILL_EXAMPLES,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: we only need "caught or not"
            report_multiple_bugs=False,
        )
    except Exception as e:  # noqa: BLE001  any other error is "E": a crash in the mutant's code proves nothing
        return "x" if _caught(e) else "E"
    return "."


def _caught(e: BaseException) -> bool:
    """True for a failed pass rule (AssertionError) or the contract's output check (BackendOutputError), or a group
    of them (hypothesis groups the failures of a flaky mutant): the property itself caught the bug."""
    inner = getattr(e, "exceptions", None)
    return all(_caught(x) for x in inner) if inner else isinstance(e, AssertionError | BackendOutputError)


@pytest.mark.parametrize("mutant", all_mutants(), ids=lambda m: m.name)
def test_mutant_is_killed(mutant: Mutant, record_property, request):
    backend = Backend(  # never registered
        f"mutant:{mutant.name}",
        mutant.fn,
        mutant.bug,
        features=mutant.features,
        nan_departure=mutant.nan_departure,
        batch_invariant=mutant.batch_invariant,
        varlen=mutant.varlen,
        paged=mutant.paged,
    )
    named = KILLED_BY[mutant.name]
    full = request.config.getoption("--full-kill-table")
    verdicts = {name: _verdict(name, backend) if full or name == named else " " for name in PROPERTIES}
    # The row travels on the test report (pytest-xdist sends it from the worker), and tests/conftest.py
    # assembles the table in the process that prints the summary.
    record_property(KILL_ROW, json.dumps({"mutant": mutant.name, "order": all_mutants().index(mutant), **verdicts}))
    # Pass: the named property fails on the mutant by its own rule; an error in the mutant's code (a TypeError from
    # a stale signature, say) is "E" and does not count: such a mutant would prove nothing.
    killers = [n for n, v in verdicts.items() if v == "x"]
    assert named in killers, (
        f"mutant {mutant.name!r} ({mutant.bug}) survived {named}, the property designed to catch it"
        + (f" (it raised an error: {verdicts[named]})" if verdicts[named] == "E" else "")
        + (f"; killed by {killers}" if killers else "")
    )


def test_every_mutant_names_a_property():
    assert set(KILLED_BY) == {m.name for m in all_mutants()} and set(KILLED_BY.values()) <= set(PROPERTIES)


def test_catalogue_is_never_registered():
    import attnbench

    names = set(attnbench.backend_names())
    leaked = [m.name for m in all_mutants() if m.name in names or m.fn in {b.fn for b in attnbench.all_backends()}]
    assert not leaked, f"mutants registered as real backends: {leaked}"
