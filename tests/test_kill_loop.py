"""SIGKILL at random moments of training, some of them while a checkpoint is being written: the checkpoint on
disk is always loadable, and the next run removes the temporary files the killed writers left."""

from __future__ import annotations

import random
import subprocess
import sys
import time

from attnbench.gpt.checkpoint import load_checkpoint
from spine_helpers import tiny_text

KILLS = 10
MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "2"]
MODEL += ["--eval-interval", "1", "--eval-iters", "1", "--no-progress", "--learning-rate", "3e-3"]
TRAIN = [*MODEL, "--max-iters", "100000"]


def test_kill_9_never_leaves_a_broken_checkpoint_or_a_lasting_temporary(tmp_path):
    (tmp_path / "text.txt").write_text(tiny_text(), encoding="utf-8")
    out = tmp_path / "ck.pt"
    cmd = [sys.executable, "-m", "attnbench.gpt", "train", "--data", str(tmp_path / "text.txt"), "--no-verify"]
    rng = random.Random(0)
    during_write = 0
    for i in range(KILLS):
        args = [*cmd, *TRAIN, "--out", str(out), "--force", "--seed", str(i)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # wait for the first checkpoint
        if i % 2:  # a random moment
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # the moment a temporary checkpoint file appears (a write in progress)
            while not list(tmp_path.glob(".ck.pt.*.tmp")) and time.monotonic() < deadline:
                pass
        writing = bool(list(tmp_path.glob(".ck.pt.*.tmp")))
        proc.kill()
        proc.wait()
        during_write += writing and bool(list(tmp_path.glob(".ck.pt.*.tmp")))
        load_checkpoint(out)  # always complete: the atomic rename never exposes half a file
    assert during_write >= 1, "no kill landed during a checkpoint write"
    assert list(tmp_path.glob(".ck.pt.*.tmp"))  # the killed writers' leftovers are there
    finish = [*cmd, *MODEL, "--max-iters", "2"]
    done = subprocess.run([*finish, "--out", str(out), "--force"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".*.tmp")) and "a temporary file left by a killed writer" in done.stdout
    load_checkpoint(out)
