"""Fixtures shared by the test modules: real SMTP servers on 127.0.0.1.

See ``tests/smtpserver.py`` for the server's options and what it records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import transaction
import trustme

from tests.smtpserver import SMTPTestServer


@pytest.fixture(scope='session')
def smtp_ca() -> trustme.CA:
    """One certificate authority for the session's TLS test servers."""
    return trustme.CA()


@pytest.fixture
def make_smtp_server(smtp_ca) -> Iterator[Callable[..., SMTPTestServer]]:
    """A factory: ``make_smtp_server(**options)`` returns a started server.

    Every server it made is stopped when the test ends.
    """
    servers: list[SMTPTestServer] = []

    def make(**options) -> SMTPTestServer:
        options.setdefault('ca', smtp_ca)
        server = SMTPTestServer(**options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def smtp_server(make_smtp_server) -> SMTPTestServer:
    """A started plain-text server (no TLS, no AUTH), stopped after the test."""
    return make_smtp_server()


@pytest.fixture
def starttls_smtp_server(make_smtp_server) -> SMTPTestServer:
    """A started server offering STARTTLS (certificate for 127.0.0.1)."""
    return make_smtp_server(tls='starttls')


@pytest.fixture
def tm() -> transaction.TransactionManager:
    """An explicit transaction manager of the test's own."""
    return transaction.TransactionManager(explicit=True)


COMPAT = Path(__file__).parent / 'compat'
PYRAMID_MAILER_PACKAGES = (
    'pyramid_mailer==0.15.1',
    'repoze.sendmail==4.5',
    'pytest',
    'webtest',
    # Beyond pyramid_mailer's own needs: the compat app's pyramid_tm and the
    # real SMTP relay its tests send to.
    'pyramid_tm',
    'aiosmtpd==1.4.6',
)


@pytest.fixture(scope='session')
def pyramid_mailer_python() -> str:
    """The python of a virtualenv with pyramid_mailer 0.15.1 installed.

    The virtualenv is ``tests/compat/.venv`` (ignored by git), created on
    first use (about a minute, from PyPI) and reused afterwards; packages
    missing from an existing one are installed.
    """
    venv = COMPAT / '.venv'
    python = venv / 'bin' / 'python'
    if not python.exists():
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    modules = 'pyramid_mailer, repoze.sendmail, pytest, webtest, pyramid_tm, aiosmtpd'
    if subprocess.run(
        [python, '-c', f'import {modules}'], capture_output=True
    ).returncode:
        subprocess.run(
            [python, '-m', 'pip', 'install', '-q', *PYRAMID_MAILER_PACKAGES],
            check=True,
        )
    return str(python)


# -- the queue protocol's backends (tests/test_queue_base.py)


@dataclass
class Backend:
    """A queue backend under the protocol tests.

    ``queue`` is the :class:`~pyramid_txmail.queue.base.Queue`; ``add``
    commits one message the way the backend's delivery does and returns its
    id; ``other`` opens a second queue object on the same storage (another
    process's view); ``snapshot`` returns everything the backend stores, to
    compare before and after a read-only call; ``clock`` is the queue's.
    """

    queue: Any
    add: Callable[[Any], str]
    other: Callable[[], Any]
    snapshot: Callable[[], object]
    clock: Any


#: name -> function(request, tmp_path, clock) -> Backend. A backend is added
#: by one decorated function below; every protocol test then runs against it.
#: A backend that needs a fixture (a server) asks ``request`` for it.
BACKENDS: dict[str, Callable[..., Backend]] = {}


def backend_factory(
    name: str,
) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def register(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        BACKENDS[name] = factory
        return factory

    return register


@backend_factory('maildir')
def maildir_backend(request: Any, tmp_path: Path, clock: Any) -> Backend:
    from pyramid_txmail.queue import MailQueue

    path = str(tmp_path / 'q')
    queue = MailQueue(path, clock=clock)

    def add(mail: Any) -> str:
        [mail_id] = ids = [queue.stage(mail)]
        queue.publish(ids)
        return mail_id

    def snapshot() -> object:
        tree = {}
        for where, dirs, files in os.walk(path):
            for name in dirs + files:
                full = os.path.join(where, name)
                st = os.lstat(full)
                content = Path(full).read_bytes() if name in files else None
                tree[full] = (st.st_mode, st.st_mtime_ns, content)
        return tree

    return Backend(queue, add, lambda: MailQueue(path, clock=clock), snapshot, clock)


@backend_factory('outbox')
def outbox_backend(request: Any, tmp_path: Path, clock: Any) -> Backend:
    """The outbox in a fresh schema of the session's PostgreSQL, on the fake
    clock (OutboxQueue stamps and compares with a given clock instead of the
    database's ``now()``)."""
    import psycopg

    from pyramid_txmail.delivery import OutboxDelivery
    from pyramid_txmail.queue.outbox import OutboxQueue

    url = request.getfixturevalue('pg_url')
    opened: list[Any] = []

    def open_queue() -> Any:
        opened.append(OutboxQueue(url, clock=clock))
        return opened[-1]

    queue = open_queue()
    delivery = OutboxDelivery(queue)

    def close_all() -> None:
        delivery.close()
        for each in opened:
            each.close()

    request.addfinalizer(close_all)

    def add(mail: Any) -> str:
        pending = delivery.vote([mail])
        pending.finish()
        pending.after_commit()
        # The producer stamps with the database's clock: the fake one instead.
        with psycopg.connect(url, autocommit=True) as conn:
            [(row_id,)] = conn.execute(
                'UPDATE txmail_outbox SET queued_at = to_timestamp(%s), '
                'due = to_timestamp(%s) WHERE id = (SELECT max(id) FROM '
                'txmail_outbox) RETURNING id',
                (clock.now, clock.now),
            ).fetchall()
        return str(row_id)

    def snapshot() -> object:
        with psycopg.connect(url) as conn:
            return [
                conn.execute(f'SELECT * FROM {table} ORDER BY 1').fetchall()
                for table in ('txmail_outbox', 'txmail_outbox_fault')
            ]

    return Backend(queue, add, open_queue, snapshot, clock)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path) -> Backend:
    """Each queue backend in turn, on a fake clock (see :data:`BACKENDS`)."""
    from tests import FakeClock

    return BACKENDS[request.param](request, tmp_path, FakeClock())


# -- PostgreSQL (the shared outbox): one server per session, a schema per test


@pytest.fixture(scope='session')
def pg_server():
    """A real PostgreSQL on 127.0.0.1 for the whole session (see
    ``tests/pgserver.py``), with the database ``txmail`` the tests use."""
    from tests.pgserver import running_server

    with running_server() as server:
        server.execute('CREATE DATABASE txmail')
        yield server


_schemas = iter(range(1, 1_000_000))


def _new_schema(server, *, outbox: bool) -> str:
    """A new schema in ``txmail``, and a URL whose search_path is it: a test
    of its own, far quicker than a database of its own (CREATE DATABASE
    copies a template: about a second on a loaded machine)."""
    from pyramid_txmail.queue.outbox import schema_sql

    name = f't_{next(_schemas)}'
    statements = [f'CREATE SCHEMA {name}']
    if outbox:
        statements += [f'SET search_path = {name}', schema_sql()]
    server.execute(*statements, dbname='txmail')
    return server.url_for('txmail') + f'?options=-csearch_path%3D{name}'


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh schema of this test's own, the outbox created in it."""
    return _new_schema(pg_server, outbox=True)


@pytest.fixture
def pg_empty_url(pg_server) -> str:
    """The URL of a fresh, empty schema of this test's own."""
    return _new_schema(pg_server, outbox=False)
