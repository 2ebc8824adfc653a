"""Contract checks on every backend: output dtype/shape/device, inputs untouched, no state across calls, determinism."""

from attnbench.conformance.properties import property_tests

test_contract, test_contract_at_kernel_sizes = property_tests("contract")
