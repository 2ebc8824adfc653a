"""The hypothesis profiles of the conformance suite (ci, dev, thorough), registered on import; the plugin imports
this, and `attnbench check --help` reads the example counts here without importing the suite."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Deadlines are off: the machines are shared and noisy, and a slow example is not a wrong one.
_common = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.differing_executors,
        HealthCheck.function_scoped_fixture,  # record_property: the tests record once per test, not per example
    ],
)
# 20 drawn examples per (property, backend, device), on top of the fixed kernel-size examples every profile runs
# (the tile boundaries, real head dims, many programs): one draw in four is kernel-sized, so each of the three
# kernel regimes is drawn too, and the whole default suite stays within 8 minutes on 2 cores.
settings.register_profile("ci", max_examples=20, derandomize=True, **_common)  # reproducible: same examples every run
settings.register_profile("dev", max_examples=20, **_common)  # random: new examples every run, so they add up
settings.register_profile("thorough", max_examples=500, **_common)  # before a release, or after touching a kernel
# HYPOTHESIS_PROFILE (tox passes it through) or CI pick the default; --hypothesis-profile overrides both.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
