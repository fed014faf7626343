"""Tests for bitfi.

Hypothesis profiles: ``ci`` (chosen when ``$CI`` is set, as on the CI
machine) derandomizes example generation so every CI run checks the same
examples; ``dev`` (the default) explores new ones each run.  Choose one
with ``HYPOTHESIS_PROFILE=ci|dev``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
