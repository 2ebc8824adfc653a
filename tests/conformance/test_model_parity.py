"""Model parity: one GPT and state_dict; logits, loss, grads and one AdamW step agree with float64 by the rule."""

from attnbench.conformance.properties import property_tests

test_model_parity, test_model_parity_at_kernel_sizes = property_tests("model_parity")
