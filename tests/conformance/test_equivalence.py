"""Equivalence: every backend's output and gradients match a float64 reference by the pass rule.

Pass rule (reference.py): max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d for x in out, dq, dk, dv.
"""

from attnbench.conformance.properties import property_tests

test_matches_float64_reference, test_matches_float64_reference_at_kernel_sizes = property_tests("equivalence")
