"""The transformers model parity table: per family and backend, the float32 model's error from the float64 truth
against the bound (twice eager float32's), and greedy tokens with the KV cache.  python reports/hf-models/table.py"""
import torch
import attnbench
from attnbench.conformance import hf_models as H
tok = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
print("| family | backend | logits err / bound | grads err / bound | tokens equal (8 steps, KV cache, float64) |")
print("|---|---|---|---|---|")
for fam in H.FAMILIES:
    truth = H.use_backend(H.build(fam, torch.float64), H.REFERENCE); want = H.greedy(truth, tok[:, :8], 8)
    for b in ["manual", "sdpa", "chunked", "hf_sdpa", "onnx_attention"]:
        be = attnbench.get_backend(b)
        if any(be.why_no_feature(f, "cpu") for f in H.FAMILIES[fam][3]):
            print(f"| {fam} | {b} | skipped: {[be.why_no_feature(f,'cpu') for f in H.FAMILIES[fam][3] if be.why_no_feature(f,'cpu')][0]} | | |"); continue
        par = "| forward only | " if be.why_no_backward("cpu") else "".join(f"| {e:.2e} / {bd:.2e} " for w, e, bd in H.parity(be, fam, tok)) 
        eq = torch.equal(H.greedy(H.use_backend(H.build(fam, torch.float64), be), tok[:, :8], 8), want)
        print(f"| {fam} | {b} {par}| {eq} |")
