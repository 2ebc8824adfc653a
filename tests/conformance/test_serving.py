"""The serving layouts on every backend: ragged batches (varlen) and the paged KV cache (properties in serving.py)."""

from attnbench.conformance.properties import property_tests

test_serving, test_serving_at_kernel_sizes = property_tests("serving")
