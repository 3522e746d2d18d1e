"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts
the server on a free port of 127.0.0.1, with its unix sockets in that
directory too, so it touches nothing of the machine's own clusters. As root
(CI runs the suite as root in a fresh clone) PostgreSQL refuses to run, so
the cluster then belongs to an unprivileged user (``nobody``) and every
server command runs as that user. Authentication is ``trust`` for the
superuser ``postgres``: only this machine can reach 127.0.0.1.

Tuned for tests, not for durability: no fsync (nothing here survives the
session anyway), and enough prepared transactions and connections for the
outbox's two-phase commit and four processor processes.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The user owning the cluster when the tests run as root.
UNPRIVILEGED = 'nobody'


def find_bindir() -> str | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``,
    else the directory of an ``initdb`` on PATH; None when there is none."""
    found = glob.glob('/usr/lib/postgresql/*/bin/initdb')
    if found:
        newest = max(found, key=lambda p: int(p.split('/')[-3].split('.')[0]))
        return os.path.dirname(newest)
    on_path = shutil.which('initdb')
    return os.path.dirname(on_path) if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway cluster: :meth:`start`, :meth:`restart`, :meth:`stop`."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix='txmail-pg-')
        self.data = os.path.join(self.root, 'data')
        self.log = os.path.join(self.root, 'server.log')
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A server program, as the cluster's owner."""
        kw = {}
        if self._user is not None:
            kw = {
                'user': self._user.pw_uid,
                'group': self._user.pw_gid,
                'extra_groups': [],
            }
        return subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, 'LC_ALL': 'C', 'TZ': 'UTC'},
            **kw,
        )

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database."""
        return self.url_for('postgres')

    def url_for(self, dbname: str) -> str:
        return f'postgresql://postgres@127.0.0.1:{self.port}/{dbname}'

    def init(self) -> None:
        self._run(
            'initdb',
            '-D',
            self.data,
            '-U',
            'postgres',
            '--auth=trust',
            '--encoding=UTF8',
            '--no-sync',
            '--no-instructions',
        )

    def start(self, **settings: object) -> None:
        """Start the server; ``settings`` override the test tuning
        (``max_prepared_transactions=0``, say)."""
        tuning = {
            'listen_addresses': '127.0.0.1',
            'fsync': 'off',
            'synchronous_commit': 'off',
            'full_page_writes': 'off',
            'max_connections': 200,
            'max_prepared_transactions': 100,
            'shared_buffers': '32MB',
            **settings,
        }
        options = ' '.join(
            [
                f'-p {self.port}',
                f'-k {self.root}',
                *(f'-c {name}={value}' for name, value in tuning.items()),
            ]
        )
        result = self._run(
            'pg_ctl',
            '-D',
            self.data,
            '-l',
            self.log,
            '-o',
            options,
            '-w',
            'start',
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f'PostgreSQL did not start: {self.tail()}')

    def stop(self) -> None:
        self._run('pg_ctl', '-D', self.data, '-m', 'fast', '-w', 'stop', check=False)

    def restart(self, **settings: object) -> None:
        """Stop (closing every connection) and start again on the same port."""
        self.stop()
        self.start(**settings)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return '(no log)'

    def execute(self, *statements: str, dbname: str = 'postgres') -> None:
        """Run statements in autocommit (CREATE DATABASE cannot run in a
        transaction)."""
        import psycopg

        with psycopg.connect(self.url_for(dbname), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed afterwards."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL found: install Debian's postgresql package (make test does)"
        )
    server = PostgresServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
