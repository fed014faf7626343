"""Tests for bitfi.

Hypothesis profiles: ``ci`` (the default, for ``make test`` and CI alike)
derandomizes example generation, so every run checks the same examples and
a test that passed once passes again; ``dev`` explores new examples each
run, to hunt for new failures: opt in with ``HYPOTHESIS_PROFILE=dev``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
