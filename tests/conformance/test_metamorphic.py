"""Metamorphic relations (no reference needed): chunked prefill, decode chain, key shift, (k, v) permutation."""

from attnbench.conformance.properties import property_tests

test_metamorphic, test_metamorphic_at_kernel_sizes = property_tests("metamorphic")
