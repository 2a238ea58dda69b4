"""A throw-away PostgreSQL cluster for tests (a real server, never a mock).

Debian's ``postgresql`` binaries, a temp directory, loopback only, a free port, trust auth.

::

    cluster = PostgresCluster.start(tmp_dir)
    url = cluster.create_database("t1")      # postgresql://postgres@127.0.0.1:PORT/t1
    ...
    cluster.stop()

From a shell (``scripts/test`` and CI): ``python -m peerflow.testing.postgres start DIR``
prints the server's URL; ``... stop DIR`` stops it. As root, the server runs as the
``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from peerflow.errors import UnsupportedError, ValidationError

__all__ = ["PostgresCluster", "find_pg_bin"]

_START_ATTEMPTS = 5


def find_pg_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None.

    ``$PEERFLOW_PG_BIN`` when set (None if it holds no ``initdb``), else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest), else ``initdb`` on PATH.
    """
    given = os.environ.get("PEERFLOW_PG_BIN")
    if given is not None:
        return Path(given) if (Path(given) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    # Postgres cannot bind port 0 and report it; a port just released is taken, and the
    # start is retried on another if someone grabbed it meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A running throw-away cluster (build with :meth:`start` or :meth:`attach`)."""

    def __init__(self, bin_dir: Path, data: Path, port: int, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.data = data
        self.port = port
        self._user = user  # run the server as this user (when we are root)

    @property
    def url(self) -> str:
        """The ``postgres`` database's URL."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """A database's URL on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @classmethod
    def start(cls, base: Path) -> PostgresCluster:
        """Create a cluster (initdb) under ``base``; start it on a free loopback port.

        Raises:
            UnsupportedError: PostgreSQL is not installed (``apt-get install postgresql``).
            ValidationError: the server did not start (its log is in the message).
        """
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise UnsupportedError("PostgreSQL is not installed (apt-get install postgresql)")
        base.mkdir(parents=True, exist_ok=True)
        user = "postgres" if os.geteuid() == 0 else None
        # The server's own directory is a fresh one under the system temp dir: as root,
        # `base` may sit under a directory the postgres user cannot enter.
        home = Path(tempfile.mkdtemp(prefix="peerflow-pg-"))
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(home, pw.pw_uid, pw.pw_gid)
        data = home / "data"
        (base / "home").write_text(str(home))
        cluster = cls(bin_dir, data, 0, user)
        cluster._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        for _ in range(_START_ATTEMPTS):
            cluster.port = _free_port()
            if cluster._start():
                (base / "port").write_text(str(cluster.port))
                return cluster
        log = (home / "server.log").read_text(errors="replace")[-2000:]
        raise ValidationError(f"PostgreSQL did not start: {log}")

    @classmethod
    def attach(cls, base: Path) -> PostgresCluster:
        """The cluster :meth:`start` left running under ``base``."""
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise UnsupportedError("PostgreSQL is not installed")
        port = int((base / "port").read_text())
        home = Path((base / "home").read_text())
        return cls(bin_dir, home / "data", port, "postgres" if os.geteuid() == 0 else None)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def _start(self) -> bool:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c max_connections=200"
        )
        log = self.data.parent / "server.log"
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start",
            check=False,
        )  # fmt: skip
        return done.returncode == 0

    def restart(self) -> None:
        """Stop the server (fast: connections dropped) and start it again, same port.

        Raises:
            ValidationError: it did not come back.
        """
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if not self._start():
            raise ValidationError(f"PostgreSQL on port {self.port} did not restart")

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        if not name.replace("_", "").isalnum():
            raise ValidationError(f"database names here are [A-Za-z0-9_]+, got {name!r}")
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-q", "-c", f"CREATE DATABASE {name}")  # fmt: skip
        return self.database_url(name)

    def stop(self) -> None:
        """Stop the server and delete its files (idempotent)."""
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            shutil.rmtree(self.data.parent, ignore_errors=True)


def main(argv: list[str]) -> int:
    """``start DIR`` (prints the URL) or ``stop DIR``."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m peerflow.testing.postgres start|stop DIR", file=sys.stderr)
        return 2
    base = Path(argv[1])
    if argv[0] == "start":
        print(PostgresCluster.start(base).url)
    else:
        PostgresCluster.attach(base).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
