"""Batch invariance (declared backends), determinism under repetition, CUDA-graph replay (CUDA only)."""

from attnbench.conformance.properties import property_tests

test_determinism, test_determinism_at_kernel_sizes = property_tests("determinism")
