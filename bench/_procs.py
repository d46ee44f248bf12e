"""Processes the ingestion benchmark starts: PostgreSQL, Redis, the service and the peer app.

Every process is started in its own session (its own process group) and registered with a
:class:`Processes` registry; leaving the registry's ``with`` block - normally, on error or on Ctrl-C -
signals every group it started (``killpg``), waits a bounded time, then SIGKILLs what is left.
Nothing here is ever matched by name: only process groups this module created are signalled.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = Path("/usr/bin/redis-server")
PG_OS_USER = "postgres"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 120.0

#: The options web/server.py gives gunicorn besides bind/workers/threads/worker_class (no access log).
PEER_GUNICORN_OPTIONS = ("--timeout", "60", "--graceful-timeout", "20", "--keep-alive", "5", "--error-logfile", "-")

#: Durable acknowledgement is what the benchmark measures: fsync and synchronous_commit stay on.
PG_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "256MB",
    "max_connections": "200",
}


class BenchError(RuntimeError):
    """A process the benchmark needs could not be started or answered wrongly."""


def guarded(work: Callable[[], None]) -> tuple[str, int]:
    """Run ``work``; return the outcome to record and the exit status. Ctrl-C or a :class:`BenchError` ends
    it early, and the caller still reports and writes what was measured so far."""
    try:
        work()
    except KeyboardInterrupt:
        print("interrupted: every started process was stopped; partial results follow", file=sys.stderr)
        return "interrupted", 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return f"failed: {exc}", 1
    return "complete", 0


def write_results(benchmark: str, payload: dict[str, Any]) -> Path:
    """``bench/results/<benchmark>-<run id>.json`` (gitignored); says where it went."""
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{benchmark}-{payload['run_id']}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def basic_auth(write_key: str) -> str:
    """The Authorization header value for a write key (username = key, empty password)."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


@dataclass
class Proc:
    """One started process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: signal.Signals = signal.SIGTERM

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """Signal the whole group, wait up to STOP_TIMEOUT, then SIGKILL the group."""
        _signal_group(self.popen.pid, self.stop_signal)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT)
        # Children that outlived their leader (gunicorn workers, postgres backends) share the group.
        _signal_group(self.popen.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Processes:
    """Registry of started process groups and temporary directories; a context manager that stops all."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="espbridge-bench-")))
    started: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Processes:
        self.workdir.chmod(0o755)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])

    def stop(self, proc: Proc) -> None:
        if proc in self.started:
            self.started.remove(proc)
        proc.stop()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name=name, popen=popen, log=log, stop_signal=stop_signal)
        self.started.append(proc)
        return proc

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(mode=0o755)
        return path


def wait_until(proc: Proc, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready`` until it is true; fail early if ``proc`` exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{what} exited with {proc.popen.returncode}\n--- {proc.log} ---\n{tail(proc.log)}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready within {timeout:.0f}s\n--- {proc.log} ---\n{tail(proc.log)}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            return False

    return check


# ------------------------------------------------------------------------------------- PostgreSQL, Redis


def start_postgres(procs: Processes) -> str:
    """initdb a throwaway cluster (trust auth, durable settings), start it; return a SQLAlchemy URL."""
    pw = pwd.getpwnam(PG_OS_USER)
    as_postgres = ["runuser", "-u", PG_OS_USER, "--"]
    base = procs.subdir("pg")
    os.chown(base, pw.pw_uid, pw.pw_gid)
    datadir = base / "data"
    _run(
        [
            *as_postgres,
            str(PG_BINDIR / "initdb"),
            "-D",
            str(datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ],
        what="initdb",
    )
    port = free_port()
    settings = [arg for key, value in PG_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
    argv = [
        *as_postgres,
        str(PG_BINDIR / "postgres"),
        "-D",
        str(datadir),
        "-h",
        HOST,
        "-p",
        str(port),
        "-k",
        str(base),
        *settings,
    ]
    # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for clients to disconnect).
    proc = procs.spawn("postgres", argv, stop_signal=signal.SIGINT)
    pg_isready = [str(PG_BINDIR / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]
    wait_until(proc, lambda: subprocess.run(pg_isready, check=False, timeout=10).returncode == 0, "postgres")
    _run([str(PG_BINDIR / "createdb"), "-h", HOST, "-p", str(port), "-U", "postgres", "espbridge"], what="createdb")
    return f"postgresql+psycopg://postgres@{HOST}:{port}/espbridge"


def start_redis(procs: Processes) -> str:
    """Start a Redis without persistence; return its URL."""
    port = free_port()
    argv = [
        str(REDIS_SERVER),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(procs.workdir),
    ]
    proc = procs.spawn("redis", argv)
    wait_until(proc, tcp_open(port), "redis-server")
    return f"redis://{HOST}:{port}/0"


def _run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv),
            cwd=REPO,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} timed out after {CLI_TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode})\n{done.stdout}\n{done.stderr}")
    return done.stdout


# ----------------------------------------------------------------------------------- gunicorn processes


@dataclass(frozen=True)
class ServerConfig:
    """gunicorn sizing shared by the service and the peer."""

    workers: int
    threads: int

    @property
    def worker_class(self) -> str:
        return "gthread" if self.threads > 1 else "sync"

    def describe(self) -> str:
        return f"{self.workers} workers x {self.threads} threads ({self.worker_class})"


@dataclass(frozen=True)
class Target:
    """A started HTTP server to load: its base URL, the auth header to send, and where its rows land."""

    name: str
    base_url: str
    authorization: str
    database_url: str | None  # None for the peer: it stores nothing
    proc: Proc


def service_env(database_url: str, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")}
    env["ESPBRIDGE_DATABASE_URL"] = database_url
    if redis_url:
        env["ESPBRIDGE_REDIS_URL"] = redis_url
    return env


def start_service(
    procs: Processes, name: str, config: ServerConfig, database_url: str, redis_url: str | None
) -> Target:
    """``espbridge migrate``, ``stores create``, then ``espbridge serve``; returns once /healthz says 200."""
    env = service_env(database_url, redis_url)
    cli = str(VENV_BIN / "espbridge")
    _run([cli, "migrate"], what="espbridge migrate", env=env)
    store = json.loads(_run([cli, "stores", "create", f"bench-{name}", "--json"], what="stores create", env=env))
    port = free_port()
    argv = [
        cli,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(config.workers),
        "--threads",
        str(config.threads),
    ]
    proc = procs.spawn(f"service-{name}", argv, env=env)
    base_url = f"http://{HOST}:{port}"
    wait_until(proc, http_ok(f"{base_url}/healthz"), f"espbridge serve ({name})")
    return Target(name, base_url, basic_auth(str(store["write_key"])), database_url, proc)


def start_peer(procs: Processes, config: ServerConfig) -> Target:
    """The bare Flask app of bench/peer_app.py under gunicorn with the settings of web/server.py."""
    port = free_port()
    argv = [
        str(VENV_BIN / "gunicorn"),
        "--chdir",
        str(REPO / "bench"),
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(config.workers),
        "--threads",
        str(config.threads),
        "--worker-class",
        config.worker_class,
        *PEER_GUNICORN_OPTIONS,
        "peer_app:app",
    ]
    proc = procs.spawn("peer", argv)
    base_url = f"http://{HOST}:{port}"
    wait_until(proc, http_ok(f"{base_url}/healthz"), "peer app")
    return Target("peer", base_url, basic_auth("peer"), None, proc)
