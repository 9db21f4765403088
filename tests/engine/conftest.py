"""The engine tests' shared fixture: tiny models of every family, exported once per session."""

from tests.support.engine_fixtures import fixtures  # noqa: F401
