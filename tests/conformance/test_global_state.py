"""A backend call leaves torch's process-wide state (default dtype, RNG, threads, flags) as it found it."""

from attnbench.conformance.properties import property_tests

test_global_state, test_global_state_at_kernel_sizes = property_tests("global_state")
