"""Fixtures shared by the test modules: real SMTP servers on 127.0.0.1.

See ``tests/smtpserver.py`` for the server's options and what it records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
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
