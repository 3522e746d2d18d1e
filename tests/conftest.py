"""Fixtures shared by the test modules: real SMTP servers on 127.0.0.1.

See ``tests/smtpserver.py`` for the server's options and what it records.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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


COMPAT_VENV = Path(__file__).parent / 'compat' / '.venv'
COMPAT_PACKAGES = (
    'pyramid_mailer==0.15.1',
    'repoze.sendmail==4.5',
    'pytest',
    'webtest',
)


@pytest.fixture(scope='session')
def pyramid_mailer_python() -> str:
    """The python of a virtualenv with the real pyramid_mailer and repoze.sendmail.

    ``tests/compat/.venv`` (gitignored), made on first use (about a minute)
    and reused while it imports both.
    """
    python = COMPAT_VENV / 'bin' / 'python'
    check = [str(python), '-c', 'import pyramid_mailer, repoze.sendmail, webtest']
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    subprocess.run([sys.executable, '-m', 'venv', str(COMPAT_VENV)], check=True)
    subprocess.run(
        [str(python), '-m', 'pip', 'install', '-q', *COMPAT_PACKAGES], check=True
    )
    return str(python)
