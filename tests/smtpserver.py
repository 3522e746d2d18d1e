"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, with fault injection.

Use the fixtures from ``tests/conftest.py`` rather than starting servers by
hand; they stop every server when the test ends: ``smtp_server`` (plain),
``starttls_smtp_server``, ``make_smtp_server(**options)`` (a factory) and
``smtp_ca`` (the session's ``trustme.CA``, used by all of them)::

    def test_it(self, smtp_server):                  # plain, started
        ...send to smtp_server.host / smtp_server.port...
        [received] = smtp_server.wait_for(1)
        assert received.rcpt_tos == ['to@example.com']
        assert received.message['Subject'] == 'Hello'

    def test_tls(self, make_smtp_server):             # a factory
        server = make_smtp_server(tls='starttls', auth={'user': 'secret'})
        settings = server.settings(username='user', password='secret')
        # or, for Configurator(settings=...): server.mail_settings(...)

Unittest-style classes get the fixtures through an autouse fixture, e.g.::

    @pytest.fixture(autouse=True)
    def _server(self, smtp_server):
        self.server = smtp_server

Options of :class:`SMTPTestServer` (all keyword-only):

``tls``
    ``None`` (plain), ``'starttls'`` or ``'implicit'`` (TLS from the first
    byte, port 465 style). The certificate is issued by ``server.ca`` (a
    ``trustme.CA``; pass ``ca=`` to share one) for ``cert_hosts``
    (``('127.0.0.1', 'localhost')``); ``server.cafile`` is a PEM path for
    ``mail.cafile``. ``client_certs=True`` asks clients for a certificate
    issued by ``server.ca``: see :meth:`SMTPTestServer.issue_client_cert`
    and ``Received.peer_cert``.
``auth``
    ``{'user': 'password'}``: AUTH PLAIN and LOGIN. AUTH is offered and
    accepted only under TLS unless ``auth_require_tls=False`` (a lax relay).
    Without ``auth`` no AUTH is offered. ``auth_mechanisms`` limits the
    mechanisms offered (default ``('PLAIN', 'LOGIN')``; ``'CRAM-MD5'`` is
    available too).
``helo_only``
    answer EHLO with 502, so clients must fall back to HELO (no extensions).
``smtputf8``
    advertise SMTPUTF8 (default ``True``).
``pipelining``
    advertise PIPELINING (default ``True``, as real relays do; aiosmtpd
    reads pipelined commands in order either way).
``strict_crlf``
    refuse message data holding a bare CR or LF with ``554 5.6.11``.
``max_recipients``
    accept at most this many recipients per transaction, answering further
    RCPTs with ``452 4.5.3 Too many recipients`` (Postfix's
    ``smtpd_recipient_limit``).

Fault injection. Each may be changed while the server runs (``server.reply
= {}`` to recover). A value may be a list, used one item per occurrence and
then no more, e.g. ``reply={'MAIL': ['451 4.3.0 try later']}`` fails the
first MAIL only.

``reply={'MAIL': '451 4.3.0 try later', ...}``
    answer a command with this reply instead of running it. Keys are SMTP
    verbs (``EHLO``, ``HELO``, ``STARTTLS``, ``AUTH``, ``MAIL``, ``RCPT``,
    ``RSET``, ``QUIT``...) plus ``'CONNECT'`` (the greeting; the server then
    closes), ``'DATA'`` (the final reply after the message content: the
    message is refused) and ``'DATA-COMMAND'`` (the reply to the DATA verb
    itself, instead of 354). A ``421`` reply or any reply to QUIT closes
    the connection afterwards.
``rcpt_reply={'bad@example.com': '550 5.1.1 no such user'}``
    per-recipient RCPT replies; other recipients are accepted.
``drop_at='DATA'``
    close the connection without a reply at that stage: any key of
    ``reply``. At ``'DATA'`` the content has been received but is not
    recorded; at ``'QUIT'`` the message was already accepted.
``close_after='DATA'``
    close the connection after a ``reply`` fault for that key was sent (a
    relay that refuses and hangs up).
``delay={'DATA': 2.0}``
    wait that many seconds before handling the stage (same keys as
    ``reply``; ``'DATA'`` delays the final reply) to provoke client
    timeouts.
``close_sessions()``
    closes every open session at once, without a reply (a relay restarting,
    or dropping idle clients); the server keeps serving new ones.

What arrived:

``messages``
    list of :class:`Received`, one per message the server answered with
    250 after its content, in order.
``wait_for(count, timeout=5.0)``
    waits until at least ``count`` messages arrived and returns them;
    raises ``AssertionError`` after ``timeout`` seconds.
``connections``
    the number of SMTP sessions clients opened (batching over one
    connection shows as 1).
``commands``
    ``(connection number, VERB, tls on)`` for every command received, e.g.
    to check that no AUTH came before STARTTLS. Arguments are not kept.
``auth_attempts``
    ``(login, tls on, success)`` per AUTH exchange.

The server serves any number of clients at once, threads or processes: it
runs aiosmtpd's ``Controller`` in its own thread and event loop.

:class:`TricklingRelay` is a raw-socket relay for what aiosmtpd cannot do:
answering a byte at a time, without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hmac
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session

__all__ = ['Received', 'SMTPTestServer', 'TricklingRelay']

HOST = '127.0.0.1'
_BARE_CR_OR_LF = re.compile(rb'\r(?!\n)|(?<!\r)\n')
# Longest a dropped session waits to be cancelled by the event loop.
_DROP_WAIT = 10.0


@dataclass
class Received:
    """One message as the server received it, with facts of its session."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly as sent, dot-unstuffed, without the final '.'
    message: EmailMessage  # ``data`` parsed with ``email.policy.default``
    mail_options: list[str]  # MAIL FROM parameters, upper case
    smtputf8: bool  # MAIL FROM had SMTPUTF8
    esmtp: bool  # the session said EHLO (not HELO)
    helo: str | None  # the name the client gave in EHLO/HELO
    tls: bool
    login: str | None  # the authenticated user, if any
    peer_cert: dict[str, Any] | None  # the client certificate, if any
    connection: int  # 1 for the first session, 2 for the next...


class SMTPTestServer:
    """An SMTP server on 127.0.0.1 and a free port; see the module docstring."""

    def __init__(
        self,
        *,
        tls: str | None = None,
        ca: trustme.CA | None = None,
        cert_hosts: tuple[str, ...] = (HOST, 'localhost'),
        client_certs: bool = False,
        auth: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_mechanisms: tuple[str, ...] = ('PLAIN', 'LOGIN'),
        helo_only: bool = False,
        smtputf8: bool = True,
        pipelining: bool = True,
        strict_crlf: bool = False,
        max_recipients: int | None = None,
        reply: dict[str, Any] | None = None,
        rcpt_reply: dict[str, Any] | None = None,
        drop_at: str | None = None,
        close_after: str | None = None,
        delay: dict[str, Any] | None = None,
    ):
        if tls not in (None, 'starttls', 'implicit'):
            raise ValueError(f'tls: expected None, starttls or implicit, got {tls!r}')
        self.tls = tls
        self.ca = ca or trustme.CA()
        self.cert_hosts = cert_hosts
        self.client_certs = client_certs
        self.auth = dict(auth or {})
        self.auth_require_tls = auth_require_tls
        self.auth_mechanisms = auth_mechanisms
        self.helo_only = helo_only
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.strict_crlf = strict_crlf
        self.max_recipients = max_recipients
        self.reply: dict[str, Any] = dict(reply or {})
        self.rcpt_reply: dict[str, Any] = dict(rcpt_reply or {})
        self.drop_at = drop_at
        self.close_after = close_after
        self.delay: dict[str, Any] = dict(delay or {})

        self.host = HOST
        self.port = 0
        self.messages: list[Received] = []
        self.commands: list[tuple[int, str, bool]] = []
        self.auth_attempts: list[tuple[str, bool, bool]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._sessions: set[_Session] = set()
        self._controller: _Controller | None = None
        self._tmpdir: str | None = None
        self._probed = False

    # -- life cycle

    def start(self) -> SMTPTestServer:
        """Bind 127.0.0.1 on a free port and serve in a thread."""
        assert self._controller is None, 'already started'
        self._tmpdir = tempfile.mkdtemp(prefix='smtptest-')
        # IPPROTO_TCP named, or asyncio leaves Nagle on for the accepted
        # sockets: replies to pipelined commands would then wait 40 ms each
        # for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind((HOST, 0))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            server_context = self._server_context() if self.tls else None
            kwargs: dict[str, Any] = {
                # aiosmtpd calls a slow getfqdn() per session without it.
                'server_hostname': 'smtp.test',
                'enable_SMTPUTF8': self.smtputf8,
                # Implicit TLS is invisible to aiosmtpd's own check.
                'auth_require_tls': self.auth_require_tls and self.tls != 'implicit',
                'authenticator': self._authenticate,
                'auth_exclude_mechanism': [
                    m
                    for m in ('PLAIN', 'LOGIN', 'CRAM-MD5')
                    if m not in self.auth_mechanisms
                ],
            }
            if self.tls == 'starttls':
                kwargs['tls_context'] = server_context
            controller = _Controller(
                self,
                sock,
                ssl_context=server_context if self.tls == 'implicit' else None,
                **kwargs,
            )
        except BaseException:
            sock.close()
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        controller.start()
        # Controller.start() has made one probe connection of its own.
        with self._lock:
            self._probed = True
            self.connections = 0
        self._controller = controller
        return self

    def stop(self) -> None:
        """Close every session, stop the thread, remove the temporary files."""
        controller, self._controller = self._controller, None
        if controller is not None:
            future = asyncio.run_coroutine_threadsafe(
                self._close_sessions(), controller.loop
            )
            with contextlib.suppress(Exception):
                future.result(timeout=5)
            controller.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- for the tests

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until ``count`` messages arrived; return all that did."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f'expected {count} message(s) within {timeout}s, '
                        f'got {len(self.messages)}'
                    )
                self._arrived.wait(left)
            return list(self.messages)

    def close_sessions(self) -> None:
        """Close every open session without a word, as a relay that restarts
        or drops idle clients does; new sessions are served as before."""
        assert self._controller is not None, 'start the server first'
        asyncio.run_coroutine_threadsafe(
            self._close_sessions(), self._controller.loop
        ).result(timeout=5)

    def say(self, line: str) -> None:
        """Write ``line`` unasked to every open session, as a relay that
        announces its shutdown (``421 ...``) before it closes."""
        assert self._controller is not None, 'start the server first'
        future = asyncio.run_coroutine_threadsafe(
            self._say(line), self._controller.loop
        )
        future.result(timeout=5)

    @property
    def cafile(self) -> str:
        """Path of a PEM file holding ``ca``'s certificate (for mail.cafile)."""
        path = self._path('ca.pem')
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def issue_client_cert(self, name: str = 'client.test') -> tuple[str, str]:
        """A client certificate from ``ca``: (certfile, keyfile) paths."""
        leaf = self.ca.issue_cert(name)
        certfile, keyfile = self._path(f'{name}.crt'), self._path(f'{name}.key')
        leaf.cert_chain_pems[0].write_to_path(str(certfile))
        leaf.private_key_pem.write_to_path(str(keyfile))
        return str(certfile), str(keyfile)

    def mail_settings(self, **overrides: str) -> dict[str, str]:
        """``mail.*`` settings, as strings, that reach this server.

        Keys in ``overrides`` are given without the ``mail.`` prefix.
        """
        settings = {
            'mail.host': self.host,
            'mail.port': str(self.port),
            'mail.timeout': '5',
            'mail.message_id_domain': 'client.test',
        }
        if self.tls:
            settings['mail.cafile'] = self.cafile
            settings['mail.tls' if self.tls == 'starttls' else 'mail.ssl'] = 'true'
        settings.update({f'mail.{k}': v for k, v in overrides.items()})
        return settings

    def settings(self, **overrides: Any):
        """A :class:`pyramid_txmail.settings.MailSettings` for this server."""
        from pyramid_txmail.settings import MailSettings

        values: dict[str, Any] = {
            'host': self.host,
            'port': self.port,
            'timeout': 5.0,
            'message_id_domain': 'client.test',
        }
        if self.tls:
            values['cafile'] = self.cafile
            values['tls' if self.tls == 'starttls' else 'ssl'] = True
        values.update(overrides)
        return MailSettings(**values)

    # -- inside the server's thread

    def _path(self, name: str) -> Path:
        assert self._tmpdir is not None, 'start the server first'
        return Path(self._tmpdir, name)

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*self.cert_hosts).configure_cert(context)
        if self.client_certs:
            context.verify_mode = ssl.CERT_OPTIONAL
            self.ca.configure_trust(context)
        return context

    def _new_session(self, kwargs: dict[str, Any]) -> _Session:
        with self._lock:
            if self._probed:
                self.connections += 1
                number = self.connections
            else:
                number = 0
        return _Session(self, number, **kwargs)

    def _take(self, faults: dict[str, Any], key: str) -> Any:
        with self._lock:
            value = faults.get(key)
            if isinstance(value, list):
                return value.pop(0) if value else None
            return value

    def _authenticate(
        self,
        smtp: SMTP,
        session: Any,
        envelope: Any,
        mechanism: str,
        auth_data: LoginPassword,
    ) -> AuthResult:
        login = auth_data.login.decode('utf-8', 'replace')
        password = auth_data.password.decode('utf-8', 'replace')
        success = login in self.auth and self.auth[login] == password
        with self._lock:
            self.auth_attempts.append((login, _tls_on(smtp), success))
        return AuthResult(success=success, handled=False, auth_data=auth_data)

    def _record(self, smtp: _Session, envelope: Any, data: bytes) -> None:
        session = smtp.session
        ssl_object = _ssl_object(smtp)
        login = None
        if session.authenticated:
            login = session.auth_data.login.decode('utf-8', 'replace')
        received = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=data,
            message=email.message_from_bytes(data, policy=email.policy.default),
            mail_options=list(envelope.mail_options),
            smtputf8=envelope.smtp_utf8,
            esmtp=session.extended_smtp,
            helo=session.host_name,
            tls=ssl_object is not None,
            login=login,
            peer_cert=(ssl_object.getpeercert() or None) if ssl_object else None,
            connection=smtp.number,
        )
        with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()

    async def _say(self, line: str) -> None:
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.write(line.encode('ascii') + b'\r\n')

    async def _close_sessions(self) -> None:
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()
        # Let connection_lost() run for each.
        for _ in range(3):
            await asyncio.sleep(0)


def _ssl_object(smtp: SMTP) -> ssl.SSLObject | None:
    if smtp.transport is None:
        return None
    return smtp.transport.get_extra_info('ssl_object')


def _tls_on(smtp: SMTP) -> bool:
    return _ssl_object(smtp) is not None


class _Controller(Controller):
    """aiosmtpd's Controller serving a socket we bound (port 0: a free port)."""

    def __init__(self, server: SMTPTestServer, sock: socket.socket, **kwargs: Any):
        super().__init__(None, hostname=HOST, port=sock.getsockname()[1], **kwargs)
        self._server = server
        self._sock = sock

    def _create_server(self):
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context
        )

    def factory(self) -> SMTP:
        return self._server._new_session(self.SMTP_kwargs)


class _Handler:
    """aiosmtpd hooks: per-recipient replies, the end of DATA, EHLO's list."""

    def __init__(self, server: SMTPTestServer):
        self.server = server

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.server.auth:
            responses = [r for r in responses if not r[4:].startswith('AUTH')]
        if self.server.pipelining:
            responses.insert(1, '250-PIPELINING')
        return responses

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        reply = self.server._take(self.server.rcpt_reply, address)
        if reply is not None:
            return reply
        limit = self.server.max_recipients
        if limit is not None and len(envelope.rcpt_tos) >= limit:
            return '452 4.5.3 Too many recipients'
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return '250 OK'

    async def handle_DATA(self, smtp, session, envelope):
        return await smtp.end_of_data(envelope)

    async def auth_CRAM__MD5(self, smtp, args):
        """RFC 2195, which aiosmtpd does not offer by itself."""
        challenge = b'<1896.697170952@smtp.test>'
        response = await smtp.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False)
        login, _, digest = response.rpartition(b' ')
        user = login.decode('utf-8', 'replace')
        password = self.server.auth.get(user)
        success = password is not None and hmac.compare_digest(
            hmac.new(password.encode(), challenge, 'md5').hexdigest().encode(), digest
        )
        with self.server._lock:
            self.server.auth_attempts.append((user, _tls_on(smtp), success))
        return AuthResult(
            success=success, handled=False, auth_data=LoginPassword(login, b'')
        )


class _QuietSession(Session):
    # aiosmtpd sets the deprecated login_data itself, logging a warning each time.
    login_data = property(
        lambda self: self._login_data,
        lambda self, value: setattr(self, '_login_data', value),
    )


class _Session(SMTP):
    """One SMTP session, with the server's faults applied to every command."""

    def __init__(self, server: SMTPTestServer, number: int, **kwargs: Any):
        super().__init__(_Handler(server), **kwargs)
        self.server = server
        self.number = number  # 0: the Controller's start-up probe, no faults
        self._greeted = False
        self._smtp_methods = {
            verb: self._command(verb, method)
            for verb, method in self._smtp_methods.items()
        }

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.server._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if not self._greeted:
            self._greeted = True
            reply = await self._fault('CONNECT') if self.number else None
            if reply is not None:
                await super().push(reply)
                self.transport.close()
                return
        await super().push(status)

    def _command(self, verb: str, method: Any) -> Any:
        key = 'DATA-COMMAND' if verb == 'DATA' else verb

        async def command(arg: str | None) -> None:
            with self.server._lock:
                self.server.commands.append((self.number, verb, _tls_on(self)))
            if verb == 'EHLO' and self.server.helo_only:
                await self.push('502 5.5.1 Error: command "EHLO" not recognized')
                return
            reply = await self._fault(key)
            if reply is None:
                await method(arg)
                return
            await self.push(reply)
            if (
                verb == 'QUIT'
                or reply.startswith('421')
                or key == self.server.close_after
            ):
                self.transport.close()

        return command

    async def _fault(self, key: str) -> str | None:
        """Apply the delay and drop for ``key``; return its reply, if any."""
        delay = self.server._take(self.server.delay, key)
        if delay:
            await asyncio.sleep(delay)
        if self.server.drop_at == key:
            self.transport.abort()
            # connection_lost() cancels this task; nothing may be sent meanwhile.
            await asyncio.sleep(_DROP_WAIT)
        return self.server._take(self.server.reply, key)

    async def end_of_data(self, envelope: Any) -> str:
        """The reply to the end of the message content."""
        reply = await self._fault('DATA')
        if reply is not None:
            if self.server.close_after == 'DATA':
                # After aiosmtpd has written the reply we return.
                self.loop.call_soon(self.transport.close)
            return reply
        data = envelope.original_content
        if self.server.strict_crlf and _BARE_CR_OR_LF.search(data):
            return '554 5.6.11 bare CR or LF in message data (RFC 5321, 2.3.8)'
        self.server._record(self, envelope, data)
        return '250 2.0.0 OK: queued'


class TricklingRelay:
    """A relay on 127.0.0.1 that answers some stages a byte at a time.

    ``trickle`` names the stages answered so: ``'CONNECT'`` (the greeting),
    SMTP verbs (``'EHLO'``, ``'MAIL'``...) and ``'DATA'`` (the reply after
    the content; the DATA verb itself gets 354 at once). Such a reply never
    ends: its continuation lines (``220-please wait``) come one byte every
    ``delay`` seconds, for at most ``give_up`` seconds, after which the
    relay closes the connection. A client that only bounds each socket
    read waits all that time; one that bounds the stage gives up sooner.
    Other stages are answered at once, as a relay offering PIPELINING
    (unless ``pipelining=False``), 8BITMIME and ``extensions``, or with
    ``replies[VERB]``. ``tls_context`` makes it implicit TLS. ``trickling``
    is set once a trickle has started; ``connections`` counts sessions.
    """

    def __init__(
        self,
        trickle: tuple[str, ...],
        *,
        delay: float = 0.2,
        give_up: float = 20.0,
        pipelining: bool = True,
        extensions: tuple[str, ...] = (),
        replies: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ):
        self.trickle = trickle
        self.extensions = extensions
        self.replies = dict(replies or {})
        self.connections = 0
        self.delay = delay
        self.give_up = give_up
        self.pipelining = pipelining
        self.tls_context = tls_context
        self.host = HOST
        self.trickling = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        # Closing a listening socket does not wake an accept() blocked on
        # it. Set here, not in the thread: __exit__ may close it first.
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TricklingRelay:
        self._accepting.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._listener.close()
        for client in list(self._clients):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for thread in [self._accepting, *self._threads]:
            thread.join(10)
        for client in self._clients:
            client.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by __exit__
                return
            self._clients.append(client)
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.tls_context is not None:
                client = self.tls_context.wrap_socket(client, server_side=True)
                self._clients.append(client)
            lines = client.makefile('rb')
            self._answer(client, 'CONNECT', '220 relay.test ESMTP')
            while not self._stop.is_set():
                line = lines.readline()
                if not line:
                    return
                verb = line.split(b' ', 1)[0].strip().upper().decode()
                if verb == 'EHLO':
                    extensions = ['PIPELINING'] if self.pipelining else []
                    extensions += self.extensions
                    text = '\r\n'.join(f'250-{e}' for e in ['relay.test', *extensions])
                    self._answer(client, verb, f'{text}\r\n250 8BITMIME')
                elif verb == 'DATA':
                    self._answer(client, 'DATA-COMMAND', '354 go ahead')
                    while lines.readline() not in (b'.\r\n', b''):
                        pass
                    self._answer(client, 'DATA', '250 2.0.0 queued')
                elif verb == 'QUIT':
                    self._answer(client, verb, '221 bye')
                    return
                else:
                    self._answer(client, verb, self.replies.get(verb, '250 OK'))

    def _answer(self, client: socket.socket, stage: str, reply: str) -> None:
        if stage not in self.trickle:
            client.sendall(reply.encode() + b'\r\n')
            return
        self.trickling.set()
        code = reply[:3]
        end = time.monotonic() + self.give_up
        while time.monotonic() < end and not self._stop.is_set():
            for byte in f'{code}-please wait\r\n'.encode():
                client.sendall(bytes([byte]))
                if self._stop.wait(self.delay):
                    return
        # Hanging up, visibly: a client still waiting sees the connection close.
        client.shutdown(socket.SHUT_RDWR)
