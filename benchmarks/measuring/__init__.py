"""Measuring code: timing, peak memory, interleaved ratios, scaling fits, training to target, heat maps, env."""
