"""The shop's test fixtures: a real SMTP relay (aiosmtpd) on 127.0.0.1."""

import email
import email.policy
import os
import socket
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

HERE = os.path.dirname(os.path.abspath(__file__))


class Relay:
    """An SMTP server recording the messages it accepts.

    ``refuse``, when set, is the reply to every MAIL FROM (e.g. ``'554 5.7.1
    not today'``), so that no message is accepted.
    """

    def __init__(self):
        self.host = '127.0.0.1'
        self.port = None
        self.refuse = None
        self.messages = []
        self._arrived = threading.Condition()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refuse:
            return self.refuse
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(
            envelope.content, policy=email.policy.default
        )
        with self._arrived:
            self.messages.append((envelope.mail_from, envelope.rcpt_tos, message))
            self._arrived.notify_all()
        return '250 Message accepted'

    def wait_for(self, count, timeout=5):
        """The messages, once ``count`` have arrived (or ``timeout`` passed)."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


class _LenientSMTP(SMTP):
    # Like Postfix, take message lines ended by a bare LF (repoze.sendmail
    # sends them so), which aiosmtpd would read as one overlong line.
    line_length_limit = 1 << 20


class _Controller(Controller):
    # Serves a socket bound to port 0, so every test run gets a free port.
    def __init__(self, handler, sock):
        super().__init__(
            handler,
            hostname='127.0.0.1',
            port=sock.getsockname()[1],
            server_hostname='relay.test',
        )
        self._sock = sock

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock)

    def factory(self):
        return _LenientSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def relay():
    """A started relay on 127.0.0.1, stopped after the test."""
    relay = Relay()
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(8)
    relay.port = sock.getsockname()[1]
    controller = _Controller(relay, sock)
    controller.start()
    yield relay
    controller.stop()


@pytest.fixture
def ini_file(relay, tmp_path):
    """development.ini, its mail server replaced by the test relay."""
    with open(os.path.join(HERE, 'development.ini')) as f:
        lines = f.read().splitlines()
    replaced = {'mail.host': relay.host, 'mail.port': str(relay.port)}
    for i, line in enumerate(lines):
        key = line.partition('=')[0].strip()
        if key in replaced:
            lines[i] = f'{key} = {replaced[key]}'
    path = tmp_path / 'test.ini'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)
