"""Throwaway PostgreSQL and Redis servers for the test session.

Hand-rolled, small equivalents of pytest-postgresql / pytest-redis: each launcher starts a real
server from the machine's binaries in a fresh temporary directory, bound to 127.0.0.1 on a free
port, and returns a handle whose ``stop()`` kills the server and removes the directory. Every
step is bounded in time, and an ``atexit`` hook stops anything a crashed session left running.

The launchers raise :class:`ServiceError` (a ``RuntimeError``); fixtures should turn it into
``pytest.fail`` (see :func:`fail_on_service_error`) - a missing server is a broken test setup,
never a reason to skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

INSTALL_HINT = "install the server binaries with: apt-get install -y postgresql redis-server"
HOST = "127.0.0.1"
PG_OS_USER = "postgres"  # OS account that runs initdb/postgres when the tests run as root
PG_DB_USER = "postgres"  # database superuser created by initdb
PG_VERSIONS_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu layout: <root>/<version>/bin
REDIS_FALLBACK_PATHS: tuple[str, ...] = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")

INITDB_TIMEOUT = 120.0
PG_START_TIMEOUT = 60  # seconds pg_ctl -w waits for the server to accept connections
PG_STOP_TIMEOUT = 15
REDIS_START_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3  # retries with a new port if another process grabbed ours (free_port race)

# Throwaway test cluster: durability is irrelevant, speed is not.
_PG_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class ServiceError(RuntimeError):
    """A test service could not be found, started or stopped."""


@contextlib.contextmanager
def fail_on_service_error() -> Iterator[None]:
    """Turn a :class:`ServiceError` raised inside the block into ``pytest.fail``."""
    try:
        yield
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------- helpers


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _make_tmp_dir(prefix: str, base_dir: Path | None) -> Path:
    """A fresh directory under ``base_dir`` (default: the system temp dir), mode 0o755."""
    if base_dir is not None:
        base_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    path.chmod(0o755)
    return path


def _check_traversable_by_others(path: Path) -> None:
    """Fail early (and clearly) if another OS user could not reach ``path``."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise ServiceError(
                f"{parent} is not traversable by other users, so the {PG_OS_USER!r} OS user cannot "
                f"reach {path}; pass a base_dir under /tmp (or chmod o+x {parent})"
            )


def _run(argv: Sequence[str], *, timeout: float, cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what} timed out after {timeout:.0f}s: {shlex.join(argv)}") from exc
    except OSError as exc:
        raise ServiceError(f"{what} could not run {shlex.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(argv)}\n"
            f"--- stdout ---\n{proc.stdout.strip()}\n--- stderr ---\n{proc.stderr.strip()}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; treat it as dead (it is not our child, init reaps it).
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return status != "Z"


# ------------------------------------------------------------------------------------------- PostgreSQL


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres_bindir() -> Path:
    """Directory holding initdb, pg_ctl and postgres.

    Search order: ``$ESPBRIDGE_PG_BINDIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``
    (highest version first), then ``$PATH``.
    """
    candidates: list[Path] = []
    if env := os.environ.get("ESPBRIDGE_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(sorted(PG_VERSIONS_ROOT.glob("*/bin"), key=_version_key, reverse=True))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for cand in candidates:
        if all(os.access(cand / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return cand
    searched = ", ".join(str(c) for c in candidates) or "nothing found"
    raise ServiceError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (searched: {searched}); {INSTALL_HINT}"
    )


def _pg_os_user() -> tuple[list[str], int, int] | None:
    """When running as root: (argv prefix, uid, gid) to run PostgreSQL tools as the postgres user."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError as exc:
        raise ServiceError(
            f"running as root but there is no {PG_OS_USER!r} OS user to run PostgreSQL as; {INSTALL_HINT}"
        ) from exc
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        raise ServiceError("running as root but `runuser` (util-linux) is missing; apt-get install -y util-linux")
    return [runuser, "-u", PG_OS_USER, "--"], pw.pw_uid, pw.pw_gid


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    datadir: Path
    bindir: Path = field(repr=False)
    basedir: Path = field(repr=False)
    logfile: Path = field(repr=False)
    _as_user: list[str] = field(default_factory=list, repr=False)
    _pid: int | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def _admin_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; returns its SQLAlchemy URL."""
        with self._admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (terminates open connections)."""
        with self._admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server (immediate shutdown, then SIGKILL) and remove its directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._kill()
        finally:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def _kill(self) -> None:
        pid = self._pid or _read_postmaster_pid(self.datadir)
        if pid is None:
            return  # never started (or already gone)
        argv = [
            *self._as_user,
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-m",
            "immediate",
            "-w",
            "-t",
            str(PG_STOP_TIMEOUT),
            "stop",
        ]
        with contextlib.suppress(ServiceError):
            _run(argv, timeout=PG_STOP_TIMEOUT + 5, cwd=self.basedir, what="pg_ctl stop")
        if not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # backends notice postmaster death and exit on their own
        deadline = time.monotonic() + PG_STOP_TIMEOUT
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise ServiceError(f"postgres (pid {pid}) survived SIGKILL for {PG_STOP_TIMEOUT}s")
            time.sleep(0.05)


def _read_postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def start_postgres(base_dir: Path | None = None) -> PostgresServer:
    """initdb a fresh cluster in a temp dir and start it on a free port of 127.0.0.1 (trust auth)."""
    bindir = find_postgres_bindir()
    as_user = _pg_os_user()
    basedir = _make_tmp_dir("espbridge-pg-", base_dir)
    try:
        datadir, sockdir, logfile = basedir / "data", basedir / "sock", basedir / "postgres.log"
        sockdir.mkdir(mode=0o700)
        prefix: list[str] = []
        if as_user is not None:
            prefix, uid, gid = as_user
            _check_traversable_by_others(basedir)
            os.chown(basedir, uid, gid)  # lets pg_ctl create the log file and initdb the data dir
            os.chown(sockdir, uid, gid)
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-A",
                "trust",
                "-U",
                PG_DB_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=INITDB_TIMEOUT,
            cwd=basedir,
            what="initdb",
        )
        last_error: ServiceError | None = None
        for _ in range(START_ATTEMPTS):
            port = free_port()
            options = [f"-p {port}", f"-k {shlex.quote(str(sockdir))}", f"-h {HOST}"]
            options += [f"-c {key}={value}" for key, value in _PG_SETTINGS.items()]
            server = PostgresServer(
                host=HOST,
                port=port,
                user=PG_DB_USER,
                datadir=datadir,
                bindir=bindir,
                basedir=basedir,
                logfile=logfile,
                _as_user=prefix,
            )
            try:
                _run(
                    [
                        *prefix,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(datadir),
                        "-l",
                        str(logfile),
                        "-w",
                        "-t",
                        str(PG_START_TIMEOUT),
                        "-o",
                        " ".join(options),
                        "start",
                    ],
                    timeout=PG_START_TIMEOUT + 10,
                    cwd=basedir,
                    what="pg_ctl start",
                )
            except ServiceError as exc:
                last_error = ServiceError(f"{exc}\n--- {logfile} (tail) ---\n{tail(logfile)}")
                with contextlib.suppress(ServiceError):
                    server._kill()  # in case it came up after pg_ctl gave up waiting
                if "already in use" in tail(logfile, 10):
                    continue  # lost the free_port race: try another port
                break
            server._pid = _read_postmaster_pid(datadir)
            atexit.register(server.stop)
            return server
        assert last_error is not None
        raise last_error
    except BaseException:
        shutil.rmtree(basedir, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ Redis


def find_redis_server() -> Path:
    """Path of redis-server: ``$ESPBRIDGE_REDIS_SERVER``, ``$PATH``, then /usr/bin and /usr/local/bin."""
    candidates = [
        os.environ.get("ESPBRIDGE_REDIS_SERVER"),
        shutil.which("redis-server"),
        *REDIS_FALLBACK_PATHS,
    ]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise ServiceError(f"redis-server not found; {INSTALL_HINT}")


@dataclass
class RedisServer:
    port: int
    binary: Path = field(repr=False)
    basedir: Path = field(repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.basedir / "redis.log"

    def stop(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server and start it again on the same port (data is not kept)."""
        if self._stopped:
            raise ServiceError("cannot restart a stopped RedisServer")
        self._terminate()
        self._launch()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(REDIS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(REDIS_STOP_TIMEOUT)

    def _launch(self) -> None:
        """Start redis-server on ``self.port`` and wait until it answers PING."""
        argv = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.basedir),
        ]
        with self.logfile.open("ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                argv,
                cwd=self.basedir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C aimed at pytest must not kill the server mid-teardown
            )
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._terminate()
                raise ServiceError(
                    f"redis-server exited with {code} on port {self.port}\n"
                    f"--- {self.logfile} (tail) ---\n{tail(self.logfile)}"
                )
            try:
                with redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self._terminate()
                raise ServiceError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{REDIS_START_TIMEOUT:.0f}s\n--- {self.logfile} (tail) ---\n{tail(self.logfile)}"
                )
            time.sleep(0.02)


def start_redis(base_dir: Path | None = None) -> RedisServer:
    """Start redis-server on a free port of 127.0.0.1 (no persistence); returns once it answers PING."""
    binary = find_redis_server()
    basedir = _make_tmp_dir("espbridge-redis-", base_dir)
    try:
        last_error: ServiceError | None = None
        for _ in range(START_ATTEMPTS):
            server = RedisServer(port=free_port(), binary=binary, basedir=basedir)
            try:
                server._launch()
            except ServiceError as exc:
                last_error = exc
                if "already in use" in str(exc):
                    continue  # lost the free_port race: try another port
                break
            atexit.register(server.stop)
            return server
        assert last_error is not None
        raise last_error
    except BaseException:
        shutil.rmtree(basedir, ignore_errors=True)
        raise
