"""The contract's optional features: GQA, window, mask_mod, document_ids, softcap, value_dim, score_mod, alibi,
sinks, return_lse (properties in features.py and lse_merge.py)."""

from attnbench.conformance.properties import property_tests

test_feature_property, test_feature_property_at_fixed_sizes = property_tests("features")
