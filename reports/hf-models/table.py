"""The transformers model parity table: per family and backend, the float32 model's error from the float64 truth
against the bound (twice eager float32's: the rule of hf_model_parity), and whether greedy generation with the KV
cache in float64 gives the truth's tokens (hf_model_generate).

    python reports/hf-models/table.py > reports/hf-models/table.md
"""

import attnbench
import torch
from attnbench.conformance import hf_models

BACKENDS = ["manual", "sdpa", "chunked", "hf_sdpa", "hf_eager", "onnx_attention"]
PROMPT, STEPS = 8, 8  # prompt tokens, greedy steps


def row(family: str, backend: attnbench.Backend, tokens: torch.Tensor, want: torch.Tensor) -> str:
    needs = hf_models.FAMILIES[family][3]
    if missing := [r for f in needs if (r := backend.why_no_feature(f, "cpu"))]:
        return f"skipped: {missing[0]} | | "
    if backend.why_no_backward("cpu"):
        errors = "forward only | | "
    else:
        errors = "".join(f"{err:.2e} / {bound:.2e} | " for _, err, bound in hf_models.parity(backend, family, tokens))
    if backend.why_unsupported("cpu", torch.float64):
        return f"{errors}n/a: refuses float64 (the backend's reason: see the README's findings)"
    model = hf_models.use_backend(hf_models.build(family, torch.float64), backend)
    return f"{errors}{torch.equal(hf_models.greedy(model, tokens[:, :PROMPT], STEPS), want)}"


def main() -> None:
    tokens = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))  # (B, T)
    print(f"| family | backend | logits err / bound | grads err / bound | tokens equal ({STEPS} steps, KV cache) |")
    print("|---|---|---|---|---|")
    for family in hf_models.FAMILIES:
        truth = hf_models.use_backend(hf_models.build(family, torch.float64), hf_models.REFERENCE)
        want = hf_models.greedy(truth, tokens[:, :PROMPT], STEPS)
        for name in BACKENDS:
            print(f"| {family} | {name} | {row(family, attnbench.get_backend(name), tokens, want)} |")


if __name__ == "__main__":
    main()
