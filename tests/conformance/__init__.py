"""The attnbench conformance suite: every property of the backend contract, runnable on any backend.

attnbench check mypkg.attn:fn                                  # verdict table, exit 1 on any failure
pytest -p attnbench.conformance.plugin --pyargs attnbench.conformance --backend mypkg.attn:fn
"""
