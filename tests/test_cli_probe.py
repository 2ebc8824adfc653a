"""Probe of the `train` / `sample` command line with every bad input a user can give: each ends with exit
code 2 and one line on stderr naming the problem (no traceback), before any training starts; a Ctrl-C at start-up
ends with one line and 130."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from attnbench.gpt.cli import main
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    tiny_text,
)

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]
TINY += ["--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A corpus, a checkpoint trained on it, and broken or foreign files beside them."""
    d = tmp_path_factory.mktemp("probe")
    (d / "text.txt").write_text(tiny_text(), encoding="utf-8")
    (d / "other.txt").write_text(tiny_text().replace("o", "0"), encoding="utf-8")  # same size, other vocabulary
    (d / "binary.dat").write_bytes(bytes(range(256)) * 8)
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    assert main(["train", "--data", str(d / "text.txt"), "--no-verify", "--out", str(d / "ck.pt"), *TINY]) == 0
    (d / "truncated.pt").write_bytes((d / "ck.pt").read_bytes()[:2000])
    (d / "a_file").write_text("")
    return d


def train_args(d, *extra):
    return ["train", "--data", str(d / "text.txt"), "--no-verify", *TINY, *extra]


BAD_TRAIN = {  # flags -> a phrase the one error line must contain
    "batch-size -1": (["--batch-size", "-1"], "batch_size must be an integer >= 1"),
    "batch-size 0": (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    "eval-iters -1": (["--eval-iters", "-1"], "eval_iters must be an integer >= 0"),
    "eval-interval -1": (["--eval-interval", "-1"], "eval_interval must be an integer >= 0"),
    "threads -1": (["--threads", "-1"], "threads must be an integer >= 0"),
    "max-iters 0": (["--max-iters", "0"], "max_iters must be an integer >= 1"),
    "max-iters -5": (["--max-iters", "-5"], "max_iters must be an integer >= 1"),
    "device bogus": (["--device", "bogus"], "'bogus'"),
    "device cuda": (["--device", "cuda"], "CUDA is not available"),
    "grad-clip -1": (["--grad-clip", "-1"], "grad_clip must be a finite number >= 0"),
    "grad-clip nan": (["--grad-clip", "nan"], "grad_clip must be a finite number >= 0, got nan"),
    "learning-rate inf": (["--learning-rate", "inf"], "learning_rate must be a finite number >= 0, got inf"),
    "learning-rate 0": (["--learning-rate", "0"], "learning_rate > 0"),
    "weight-decay nan": (["--weight-decay", "nan"], "weight_decay must be a finite number >= 0, got nan"),
    "beta2 1": (["--beta2", "1"], "beta2 must be in [0, 1)"),
    "dtype": (["--dtype", "float16"], "dtype must be float32, float64 or bfloat16"),
    "adamw-impl": (["--adamw-impl", "nope"], "adamw_impl must be one of"),
    "block-size > val split": (["--block-size", "1000"], "validation split has"),
}


@pytest.mark.parametrize("extra,phrase", BAD_TRAIN.values(), ids=BAD_TRAIN.keys())
def test_bad_train_flag_is_one_line_and_exit_2(files, capsys, extra, phrase):
    err = one_error_line(capsys, main(train_args(files, *extra)))
    assert phrase in err, err


def one_error_line(capsys, rc):
    captured = capsys.readouterr()
    assert rc == 2, captured
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "step" not in captured.out  # refused before any training
    return err


@pytest.mark.parametrize(
    "out,phrase",
    [
        ("", "is a directory"),
        ("a_file/ck.pt", "cannot be written"),
        ("ck.pt", "already exists; pass --force"),
    ],
    ids=["directory", "unwritable", "existing checkpoint"],
)
def test_bad_out_is_refused_before_training(files, capsys, out, phrase):
    err = one_error_line(capsys, main(train_args(files, "--out", str(files / out))))
    assert phrase in err and str(files / out) in err, err


def test_force_replaces_and_resume_continues_its_own_checkpoint(files, tmp_path, capsys):
    (tmp_path / "old.pt").write_bytes((files / "ck.pt").read_bytes())
    assert main(train_args(files, "--out", str(tmp_path / "old.pt"), "--force")) == 0
    resumed = ["train", "--data", str(files / "text.txt"), "--no-verify", "--resume", str(tmp_path / "old.pt")]
    assert main([*resumed, "--max-iters", "4"]) == 0  # --out comes from the checkpoint: its own file
    assert "steps 4/4" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["empty.pt", "truncated.pt", "notes.pt", "foreign.pt"])
@pytest.mark.parametrize("command", ["sample", "resume"])
def test_broken_checkpoint_is_one_line(files, capsys, name, command):
    path = str(files / name)
    args = ["sample", "--checkpoint", path] if command == "sample" else train_args(files, "--resume", path)
    err = one_error_line(capsys, main(args))
    assert path in err and "checkpoint" in err, err


def test_resume_on_another_vocabulary_is_refused(files, capsys):
    args = ["train", "--data", str(files / "other.txt"), "--no-verify", "--resume", str(files / "ck.pt")]
    err = one_error_line(capsys, main([*args, "--out", str(files / "never.pt")]))
    assert "another vocabulary" in err and "only in the data '0'" in err, err


def test_binary_data_file_is_named(files, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(files / "binary.dat"), "--no-verify", *TINY]))
    assert str(files / "binary.dat") in err and "not UTF-8 text" in err


BAD_SAMPLE = {
    "device cuda": (["--device", "cuda"], "CUDA is not available"),
    "device bogus": (["--device", "bogus"], "bogus"),
    "temperature nan": (["--temperature", "nan"], "--temperature must be a finite number > 0"),
    "temperature 0": (["--temperature", "0"], "--temperature must be a finite number > 0"),
    "max-new-tokens -1": (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    "top-k 0": (["--top-k", "0"], "top_k must be >= 1"),
}


@pytest.mark.parametrize("extra,phrase", BAD_SAMPLE.values(), ids=BAD_SAMPLE.keys())
def test_bad_sample_flag_is_one_line_and_exit_2(files, capsys, extra, phrase):
    err = one_error_line(capsys, main(["sample", "--checkpoint", str(files / "ck.pt"), *extra]))
    assert phrase in err, err


def test_ctrl_c_during_start_up_is_one_line(files, capsys, monkeypatch):
    """Ctrl-C while the data loads (before training, so before anything could be saved): the shell's 130."""

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("attnbench.gpt.cli.Dataset.load", interrupted_load)
    assert main(train_args(files, "--out", str(files / "never.pt"))) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "stopped by Ctrl-C (nothing saved)" and "step" not in captured.out


def test_ctrl_c_while_torch_imports_is_one_line():
    """Ctrl-C in the first second of `attnbench`, while the command line (and torch) is still importing: one line
    and 130, where the console script used to print the import's traceback. A meta-path hook raises the
    KeyboardInterrupt at the import of torch, exactly where a real Ctrl-C lands; the launcher must import nothing
    of attnbench (and so no torch) before it can catch it."""
    script = textwrap.dedent(
        """
        import sys
        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, CtrlC())
        import attnbench_launcher
        assert "torch" not in sys.modules and "attnbench" not in sys.modules
        sys.exit(attnbench_launcher.main(["run", "--help"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "attnbench: stopped by Ctrl-C while starting (nothing done)\n"
