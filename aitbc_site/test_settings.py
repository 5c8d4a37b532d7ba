"""Settings for the test suite: the project's settings, plus what every test wants, said once.

pytest-django exports this module as ``DJANGO_SETTINGS_MODULE``, so the servers and workers a
test starts in a subprocess inherit it too (deployments built by ``aitbc_site.testing`` set the
production module themselves).
"""

from aitbc_site.settings import *  # noqa: F403
from core.env import env_list

# The default hasher costs about half a second a password; admin and sign-in tests make many.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No per-process reuse of what was read: a test sees the rows it has just written.
JOB_OUTLOOK_CACHE_SECONDS = 0
MODEL_CATALOG_CACHE_SECONDS = 0
EXPLORER_STATS_CACHE_SECONDS = 0

# Worker threads a test starts load no model unless the test, or a subprocess's environment, names one.
INFERENCE_MODELS = env_list("INFERENCE_MODELS")

# Claims don't wait on reputations: tests that count on the head start set it themselves.
MATCHING_REPUTATION_HEADSTART_SECONDS = 0
