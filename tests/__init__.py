"""The project's own test suite (tests/support is importable as tests.support)."""
