"""One rank of the data-parallel tests (tests/test_distributed.py), under torchrun: trains the tiny GPT once per
optimizer (rank 0 writes each run's evaluation history and final parameters to the JSON path given), then runs
the `train` CLI with the remaining arguments inside the same process group and exits with its status."""

import json
import sys

import torch
from attnbench.gpt import cli, distributed
from attnbench.gpt.train import train
from spine_helpers import tiny_dataset, tiny_model_config, tiny_train_config

MODEL = dict(n_head=2, n_kv_head=1, window=6)  # GQA and a sliding window: the model's every attention path
STEPS, GLOBAL_BATCH = 24, 8

if __name__ == "__main__":
    torch.set_num_threads(1)
    dp, _ = distributed.init_from_torchrun("cpu")
    runs = {}
    for optimizer in ("adamw", "muon"):
        cfg = tiny_train_config(max_iters=STEPS, batch_size=GLOBAL_BATCH, optimizer=optimizer)
        result = train(cfg, tiny_model_config("manual", **MODEL), tiny_dataset(), log=lambda s: None)
        params = {n: p.detach().flatten().tolist() for n, p in result.model.named_parameters()}
        runs[optimizer] = {"history": result.history, "params": params}
    if dp.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump({"world_size": dp.world_size, "runs": runs}, f)
    raise SystemExit(cli.main(sys.argv[2:]))  # it leaves the process group at its end
