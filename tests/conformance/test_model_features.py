"""The GPT with grouped-query attention (n_kv_head) and a sliding window: causality, window reach, parity."""

from attnbench.conformance.properties import property_tests

test_model_feature_property, test_model_feature_property_at_kernel_sizes = property_tests("model_features")
