"""ONNX Runtime plumbing for the onnx_* backends: one-node graphs, cached sessions, zero-copy I/O binding.

Tensors cross without a copy: ONNX Runtime's I/O binding reads the inputs from torch's own buffers and writes
the output into a torch tensor allocated here (a non-contiguous input is made contiguous in torch first, a
copy). Sessions are built once per (graph, dtype, thread count) with symbolic shapes: one session serves every
shape, and ONNX Runtime keeps its per-shape plans inside it. The thread count is torch's at the call
(`torch.get_num_threads()`), so a timed comparison gives ONNX Runtime the same threads as PyTorch.
onnxruntime and onnx are imported on first use only.
"""

from __future__ import annotations

import functools

import torch

from .foreign import contiguous, missing_package_reason

ONNX_OPSET = 23  # the standard Attention operator (is_causal, GQA by head counts, softcap) is in opset 23


def ort_missing_reason() -> str | None:
    install = "pip install 'attnbench[onnxruntime]'"
    return missing_package_reason("onnxruntime", install) or missing_package_reason("onnx", install)


@functools.cache
def _numpy_dtypes() -> dict[torch.dtype, object]:
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64, torch.bool: np.bool_}


@functools.lru_cache(maxsize=128)
def session(op: str, domain: str, inputs: tuple[tuple[str, torch.dtype], ...], attrs: tuple, dtype, threads: int):
    """An InferenceSession of the one-node graph `op`(inputs) -> "out" (dtype), all shapes symbolic."""
    import onnxruntime as ort
    from onnx import helper
    from onnx.helper import np_dtype_to_tensor_dtype

    np_types = _numpy_dtypes()

    def info(name, t):
        return helper.make_tensor_value_info(name, np_dtype_to_tensor_dtype(np_types[t]().dtype), None)

    node = helper.make_node(op, [name for name, _ in inputs], ["out"], domain=domain, **dict(attrs))
    graph = helper.make_graph([node], op, [info(n, t) for n, t in inputs if n], [info("out", dtype)])
    opsets = [helper.make_opsetid("", ONNX_OPSET)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model = helper.make_model(graph, opset_imports=opsets)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(op: str, domain: str, inputs: dict[str, torch.Tensor | None], attrs: dict, out_shape) -> torch.Tensor:
    """Run the one-node graph on CPU tensors (None = an omitted optional input); the output is a new tensor."""
    tensors = {name: None if t is None else contiguous(t) for name, t in inputs.items()}
    dtype = next(t.dtype for t in tensors.values() if t is not None)
    signature = tuple(("", None) if t is None else (name, t.dtype) for name, t in tensors.items())
    sess = session(op, domain, signature, tuple(sorted(attrs.items())), dtype, torch.get_num_threads())
    np_types = _numpy_dtypes()
    out = torch.empty(out_shape, dtype=dtype)
    binding = sess.io_binding()
    for name, t in tensors.items():
        if t is not None:
            binding.bind_input(name, "cpu", 0, np_types[t.dtype], tuple(t.shape), t.data_ptr())
    binding.bind_output("out", "cpu", 0, np_types[dtype], tuple(out.shape), out.data_ptr())
    sess.run_with_iobinding(binding)
    return out
