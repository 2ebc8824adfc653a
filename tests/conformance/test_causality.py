"""Causality at op level (future inputs, gradients, prefix runs; Tq < Tk in absolute positions) and in the GPT."""

from attnbench.conformance.properties import property_tests

test_causal, test_causal_at_kernel_sizes = property_tests("causality")
