"""The serving layouts on every backend: ragged batches (varlen) and the paged KV cache (properties in serving.py)."""

from attnbench.conformance.properties import property_tests
from attnbench.conformance.serving import SERVING_PROPERTIES

test_serving, test_serving_at_kernel_sizes = property_tests(list(SERVING_PROPERTIES))
