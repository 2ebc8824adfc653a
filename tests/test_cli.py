"""`python -m attnbench.gpt train|sample`: every config field is a flag, a tiny end-to-end run, and each bad
input ends with exit code 2 and one readable line (no traceback)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys

import pytest
from attnbench.gpt.cli import main
from attnbench.gpt.data import DATA_ENV
from attnbench.gpt.model import GPTConfig
from attnbench.gpt.train import TrainConfig
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    tiny_text,
)

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]
TINY += ["--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(tiny_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt.pt"
    assert main(["train", "--data", str(corpus), "--no-verify", "--out", str(out), "--watch", "2", *TINY]) == 0
    return out


def one_error_line(capsys, rc):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_help_explains_every_config_field(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for cls in (GPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name != "vocab_size":  # set from the data's tokenizer
                assert "--" + f.name.replace("_", "-") in text, f.name
    for flag in ("--data", "--resume", "--watch", "--backend", "--device", "--max-iters", "--out"):
        assert flag in text
    assert "cosine decays to this at max_iters" in text  # help comes from the field comments
    assert main(["sample", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--prompt", "--temperature", "--top-k", "--max-new-tokens", "--backend", "--seed"):
        assert flag in text


def test_train_prints_a_summary_and_watch_lines(checkpoint, corpus, capsys, tmp_path):
    assert checkpoint.is_file()
    assert main(["train", "--data", str(corpus), "--no-verify", "--watch", "2", *TINY]) == 0
    out = capsys.readouterr().out
    assert "final val loss (whole val split)" in out and "median" in out and "p90" in out and "wall time" in out
    watch = [line for line in out.splitlines() if line.startswith("step") and "| loss" in line]
    assert len(watch) == 3  # steps 2, 4, 6


def test_sample_with_and_without_cache(checkpoint, capsys):
    args = ["sample", "--checkpoint", str(checkpoint), "--prompt", "to be", "--max-new-tokens", "40", "--seed", "3"]
    assert main(args) == 0
    cached = capsys.readouterr().out
    assert main([*args, "--no-cache", "--backend", "manual"]) == 0
    assert capsys.readouterr().out == cached and cached.startswith("to be") and len(cached) == 5 + 40 + 1


def test_missing_data_file(tmp_path, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(tmp_path / "nope.txt"), *TINY]))
    assert "nope.txt" in err and "does not exist" in err


def test_no_data_anywhere_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("attnbench.gpt.data.URL", (tmp_path / "offline.txt").as_uri())  # no network
    err = one_error_line(capsys, main(["train", *TINY]))
    assert "could not download" in err and DATA_ENV in err and "--data" in err


def test_unknown_backend_lists_known_ones(corpus, checkpoint, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(corpus), "--no-verify", "--backend", "bogus", *TINY]))
    assert "bogus" in err and "sdpa" in err and "per_head_loop" in err
    err = one_error_line(capsys, main(["sample", "--checkpoint", str(checkpoint), "--backend", "bogus"]))
    assert "known backends" in err


def test_backend_that_cannot_run_here(corpus, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(corpus), "--backend", "sdpa_cudnn", *TINY]))
    assert "cannot run on cpu" in err and "CUDA" in err


def test_missing_checkpoint(tmp_path, capsys):
    err = one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path / "none.pt")]))
    assert "none.pt" in err and "does not exist" in err
    err = one_error_line(capsys, main(["train", "--resume", str(tmp_path / "none.pt"), *TINY]))
    assert "does not exist" in err


def test_prompt_with_unknown_character(checkpoint, capsys):
    err = one_error_line(capsys, main(["sample", "--checkpoint", str(checkpoint), "--prompt", "to bé"]))
    assert "'é' at position 4" in err


def test_bad_config_and_block_size_longer_than_data(corpus, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(corpus), "--no-verify", *TINY, "--n-head", "3"]))
    assert "divisible by n_head" in err
    err = one_error_line(capsys, main(["train", "--data", str(corpus), "--no-verify", *TINY, "--block-size", "99999"]))
    assert "too short for block_size 99999" in err


def test_checksum_is_checked_unless_told_not_to(corpus, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(corpus), *TINY]))
    assert "sha256" in err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "attnbench.gpt", "sample"], capture_output=True, text=True)
    assert r.returncode == 2 and "--checkpoint" in r.stderr  # argparse: the required flag is missing


def test_resume_continues_the_run(corpus, checkpoint, capsys, tmp_path):
    args = ["train", "--data", str(corpus), "--no-verify", "--resume", str(checkpoint), "--max-iters", "9"]
    assert main([*args, "--out", str(tmp_path / "more.pt")]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "steps 9/9" in out and "val never beat" in out


def test_sigterm_saves_the_last_checkpoint_and_exits_143(corpus, tmp_path):
    """What schedulers and `timeout` send: the run stops at a step boundary, saves .last, exits 128 + 15."""
    out = tmp_path / "term.pt"
    args = [*TINY, "--max-iters", "100000", "--eval-interval", "0"]
    cmd = [sys.executable, "-m", "attnbench.gpt", "train", "--data", str(corpus), "--no-verify", "--out", str(out)]
    proc = subprocess.Popen([*cmd, *args, "--watch", "1"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("step")  # training has started (the first watch line)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout
    last = tmp_path / "term.last.pt"
    assert f"stopped by SIGTERM; continue with --resume {last}" in stdout and last.is_file()


def test_a_crafted_pickle_is_refused_and_never_run(tmp_path, capsys):
    # A checkpoint whose pickle builds an object by calling os.system: loading it must not call anything.
    import os

    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "model_config": {}, "tokenizer": {}}, evil)
    err = one_error_line(capsys, main(["sample", "--checkpoint", str(evil)]))
    assert "refused unread" in err and "posix.system" in err and not marker.exists()
    err = one_error_line(capsys, main(["train", "--resume", str(evil), *TINY]))
    assert "refused unread" in err and not marker.exists()


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda c: c.pop("train_config"), "lacks train_config"),
        (lambda c: c.pop("optimizer"), "lacks optimizer"),
        (lambda c: c["train_config"].update(no_such_field=1), "does not fit this version"),
    ],
)
def test_resume_of_an_incomplete_checkpoint_is_one_line(checkpoint, corpus, tmp_path, capsys, damage, says):
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, tmp_path / "damaged.pt")
    err = one_error_line(
        capsys, main(["train", "--data", str(corpus), "--no-verify", "--resume", str(tmp_path / "damaged.pt")])
    )
    assert says in err


def test_sample_with_a_malformed_tokenizer_is_one_line(checkpoint, tmp_path, capsys):
    import torch

    for bad in ({"chars": 7}, {"chars": "ab"}, "not a dict"):
        ckpt = torch.load(checkpoint, weights_only=True)
        ckpt["tokenizer"] = bad
        torch.save(ckpt, tmp_path / "bad_tok.pt")
        err = one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path / "bad_tok.pt")]))
        assert "malformed tokenizer" in err


def test_resume_below_the_checkpoints_step_deletes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "ck.pt"
    last = tmp_path / "ck.last.pt"
    assert main(["train", "--data", str(corpus), "--no-verify", "--out", str(out), *TINY]) == 0
    import shutil

    shutil.copy(out, last)  # an interrupted run's state, at step 6
    err = one_error_line(
        capsys, main(["train", "--data", str(corpus), "--no-verify", "--resume", str(last), "--max-iters", "3"])
    )
    assert "not past step" in err and last.exists() and out.exists()
