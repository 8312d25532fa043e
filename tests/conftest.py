"""Shared fixtures: every test runs in its own working directory with no FLOWTRAIL_*
environment, so the default store and config files are the test's own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import flowtrail.config as config_module
import flowtrail.pipeline as pipeline_module

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh directory without FLOWTRAIL_* variables or cached config."""
    for name in list(os.environ):
        if name.startswith("FLOWTRAIL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config_module._file_cache.clear()
    pipeline_module._reported.clear()
    yield tmp_path
    pipeline_module.flush_all(10.0)


def run_python(code: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None):
    """Run ``code`` in a new interpreter with flowtrail importable; return the result."""
    import subprocess

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    full_env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------- search servers
@pytest.fixture(scope="session")
def es_node():
    """A real Elasticsearch 7.9 node on 127.0.0.1 for the session (see es_server.py)."""
    from es_server import EsNode, ServerError

    node = EsNode("single", cluster="flowtrail-single")
    try:
        node.start()
        node.wait_ready()
    except ServerError as exc:
        node.remove()
        pytest.fail(str(exc), pytrace=False)
    yield node
    node.remove()


@pytest.fixture(scope="session")
def osmem():
    """An osmem-server (OpenSearch-compatible, in memory) for the session."""
    from es_server import ServerError, start_osmem

    try:
        server = start_osmem()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


@pytest.fixture(params=["elasticsearch", "opensearch"])
def search_url(request):
    """The URL of a real search server: Elasticsearch 7.9, then osmem (OpenSearch)."""
    if request.param == "elasticsearch":
        return request.getfixturevalue("es_node").url
    return request.getfixturevalue("osmem").url
