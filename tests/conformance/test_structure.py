"""Structural properties: convex combination, batch/head independence, dropout, huge logits, eval mode."""

from attnbench.conformance.properties import property_tests

test_property, test_property_at_kernel_sizes = property_tests("structure")
