"""Real PostgreSQL for the tests: a database of its own per test on the project's server,
and a private cluster (initdb) that a test may stop and start.

The project's server is 127.0.0.1:5432, trust auth (``FINDIMAGE_TEST_PG`` names another
admin URL). Without it the PostgreSQL tests skip, unless ``FINDIMAGE_REQUIRE_SERVERS=1``
(CI sets it), where they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from glob import glob
from pathlib import Path

import asyncpg
import pytest

ADMIN_URL = os.environ.get("FINDIMAGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _unavailable(why: str) -> None:
    if os.environ.get("FINDIMAGE_REQUIRE_SERVERS") == "1":
        pytest.fail(f"PostgreSQL is required here: {why}")
    pytest.skip(f"no PostgreSQL: {why}")


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{name}"


async def admin(url: str = ADMIN_URL) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        _unavailable(f"{url.split('@')[-1]}: {e}")
        raise


async def create_database(url: str = ADMIN_URL) -> str:
    """A fresh, uniquely named database; returns its URL."""
    name = f"findimage_test_{uuid.uuid4().hex[:12]}"
    conn = await admin(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """A PostgreSQL cluster of our own on a random loopback port, for stop/start tests.

    initdb refuses root: as root, the cluster belongs to the ``postgres`` user.
    """

    def __init__(self) -> None:
        found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found and not shutil.which("initdb"):
            _unavailable("initdb is not installed")
        self.bin = Path(found[-1]).parent if found else Path(shutil.which("initdb")).parent
        self.root = Path(tempfile.mkdtemp(prefix="findimage-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no postgres user for initdb")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, *args], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> PrivateCluster:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A",
                  "trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c fsync=off -c max_connections=50")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "log"), "-w", "-t", "60", "start", timeout=90)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t",
                  "60", "stop", timeout=90)

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
