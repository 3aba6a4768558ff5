"""Shared test builders, references and fixtures (exposed to every test file through
tests/conftest.py). Test files import from here, never from each other; no module of
`worker` imports from here."""
