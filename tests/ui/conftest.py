"""Web UI tests: the `browser` marker (they drive Debian's chromium; skipped, saying why, when it is absent)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real browser (chromium) against `expertkit webui`")
