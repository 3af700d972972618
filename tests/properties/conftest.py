"""Hypothesis profiles for the property suite.

``ci`` (the default): derandomized — the same examples on every run — with the per-test
example counts in the tests (over 200 in all); ``thorough`` (``HYPOTHESIS_PROFILE=thorough``):
10x as many, random.  No example database is written.
"""
import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("thorough", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
