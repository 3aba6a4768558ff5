"""Shared test builders (exposed to tests through tests/conftest.py and plain imports)."""
