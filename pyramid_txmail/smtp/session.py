"""The SMTP session: one connection to the relay, over :mod:`smtplib`.

:class:`SMTPConnection` connects, greets, secures and logs in, sends one
message at a time (:meth:`~SMTPConnection.send`, lock-step where the relay
does not pipeline) and translates every failure; :mod:`.pipeline` builds
RFC 2920 pipelining of many messages on it.

Built on :mod:`smtplib` and :mod:`ssl`. Every failure leaves this package as
one of three :class:`DeliveryError` subclasses, which tell the caller what
to do with the message:

``TemporaryDeliveryError``
    a 4xx reply, a refused or dropped connection, a timeout: try again later.
``PermanentDeliveryError``
    a 5xx reply for this message, or SMTPUTF8 needed but not offered: give up.
``ConfigurationFault``
    our settings or the relay's are wrong (login refused, STARTTLS not
    offered, certificate not trusted, 5xx to the greeting or EHLO): keep the
    message, pause, and tell an operator.

Each phase of a session has ``mail.timeout`` seconds as a whole, not only
per socket read: setting up (connect, greeting, EHLO, STARTTLS, AUTH), each
command or pipelined group of commands, and a message's content with its
reply. A relay that trickles its replies a byte at a time cannot hold a
session longer (see :class:`_Deadline`).

Nothing here ever puts the password into an exception, a traceback or a log
record: AUTH is done here rather than by :mod:`smtplib` (which keeps the
password on its object and encodes it as ASCII), with UTF-8 credentials, and
whatever goes wrong during it becomes a fresh error without cause, context
or the relay's text, which may echo the credentials.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import os
import re
import select
import smtplib
import socket
import ssl
import threading
import weakref
from types import TracebackType
from typing import Any

from pyramid_txmail.deadline import Deadline, Watchdog
from pyramid_txmail.exceptions import (
    ConfigurationFault,
    DeliveryError,
    PermanentDeliveryError,
    Refusals,
    TemporaryDeliveryError,
)
from pyramid_txmail.message import Envelope, is_mailbox
from pyramid_txmail.settings import MailSettings, is_loopback

__all__ = ['AUTH_MECHANISMS', 'SHOWN_REFUSALS', 'SMTPConnection', 'make_ssl_context']

# The package's logger, named in docs/logging.rst.
log = logging.getLogger('pyramid_txmail.smtp')

_ANY_EOL = re.compile(rb'\r\n|\r|\n')
# RFC 3463 enhanced status code, the only part of an AUTH reply we repeat.
_ENHANCED_CODE = re.compile(r'[245]\.\d{1,3}\.\d{1,3}')
#: AUTH mechanisms in the order tried (smtplib's order, so that a relay that
#: worked with smtplib sees the same exchange).
AUTH_MECHANISMS = ('CRAM-MD5', 'PLAIN', 'LOGIN')
#: Refused recipients named in a log line or an error; the others are counted.
SHOWN_REFUSALS = 5
# smtplib's code for a reply line that does not start with one.
_UNREADABLE = -1


def make_ssl_context(settings: MailSettings) -> ssl.SSLContext:
    """The client TLS context for ``settings``.

    Certificate and host name verification are on unless
    ``mail.tls_verify`` is false; ``mail.cafile`` replaces the system
    store; ``mail.certfile``/``mail.keyfile`` give a client certificate.
    Raises :class:`ConfigurationFault` when a file cannot be loaded.
    """
    try:
        context = ssl.create_default_context(cafile=settings.cafile)
        if settings.certfile:
            context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationFault(
            f'cannot load the TLS files (mail.cafile={settings.cafile!r}, '
            f'mail.certfile={settings.certfile!r}, '
            f'mail.keyfile={settings.keyfile!r}): {exc}'
        ) from exc
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _new_watchdog() -> Watchdog:
    """The one thread of a process that ends SMTP phases past their deadline
    (see :class:`~pyramid_txmail.deadline.Watchdog`)."""
    return Watchdog('pyramid_txmail-smtp-deadline', on_start=_install_fork_hook)


_fork_hook_installed = False


def _watchdog() -> Watchdog:
    """This process's watchdog."""
    return _WATCHDOG


def _install_fork_hook() -> None:
    """Give forked children a watchdog of their own; registered when the
    first watchdog thread starts, never at import (a child inherits it)."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_forget_watchdog)
        _fork_hook_installed = True


def _forget_watchdog() -> None:
    """In a forked child: the parent's watchdog has no thread here, and its
    lock may have been held at the fork. Sessions inherited from the parent
    are not watched by the child's (they belong to the parent: see
    :mod:`.pool`)."""
    global _WATCHDOG
    _WATCHDOG = _new_watchdog()


_WATCHDOG = _new_watchdog()  # no thread until a session is watched


def _lookup(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port)`` for TCP, within ``timeout`` seconds.

    The system resolver cannot be interrupted and may wait on unreachable
    name servers for much longer than ``mail.timeout``: it runs in a daemon
    thread of its own, and a lookup that takes too long is given up (the
    thread ends when the resolver does). Numeric addresses need no thread.
    """
    try:
        return socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        pass  # a name: looked up below
    found: list[list[tuple[Any, ...]]] = []
    failed: list[OSError] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=resolve, name='pyramid_txmail-lookup', daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise TimeoutError(f'looking up {host} took too long')
    if failed:
        raise failed[0]
    return found[0]


class _Deadline(Deadline):
    """Shuts a session's socket down when a phase runs past its deadline.

    smtplib's timeout bounds each socket read, so a relay answering a byte
    at a time could hold a session for as long as it likes. Used as a
    context manager, this gives the phase inside ``timeout`` seconds in all
    (see :class:`~pyramid_txmail.deadline.Deadline`), watched by the
    process's one SMTP watchdog thread from :meth:`watch` to
    :meth:`release`.
    """

    def __init__(self, timeout: float):
        super().__init__(timeout, _watchdog)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        fired = self.end()
        if fired is not None and exc_type is None:
            # Shut down during the phase: what was read last may be a reply
            # cut short, e.g. the '250' of '250-please wait', which smtplib
            # takes for a whole one.
            raise smtplib.SMTPServerDisconnected(f'shut down by the deadline ({fired})')

    def watch(self, sock: socket.socket, *, owned: bool = False) -> None:
        """Guard ``sock`` until :meth:`release`."""
        try:
            super().watch(sock, owned=owned)
        except RuntimeError as exc:  # the process is at its limit of threads
            raise TemporaryDeliveryError(
                f'cannot start the thread that bounds each SMTP phase ({exc})'
            ) from None


class SMTPConnection:
    """One SMTP session with the relay named by ``settings``.

    ``open()`` connects, says EHLO (HELO if refused), switches to TLS and
    logs in as configured; ``send()`` hands over one message and may be
    called many times; ``close()`` says QUIT. Used as a context manager it
    opens and closes itself. After a per-message failure the session is
    reset and stays usable; after a connection-level failure ``alive`` is
    False and the caller opens a new connection.

    Each phase has ``mail.timeout`` seconds in all; :meth:`cut` (from any
    thread) ends the session sooner, e.g. when a processor stops.

    ``smtp_class`` is :mod:`smtplib`'s class, replaceable for tests; it
    serves implicit TLS too (the socket is made here, see :meth:`_connect`).
    """

    def __init__(
        self,
        settings: MailSettings,
        *,
        smtp_class: type[smtplib.SMTP] = smtplib.SMTP,
    ):
        self.settings = settings
        self.smtp_class = smtp_class
        self._smtp: smtplib.SMTP | None = None
        self._deadline = _Deadline(settings.timeout)
        # A connection dropped without close() must not leave its thread.
        weakref.finalize(self, self._deadline.release)
        self._stage = 'MAIL FROM'  # of send(), named in its errors
        #: True when the last :meth:`check` got no answer within
        #: ``mail.timeout``: the relay may answer no other session either.
        self.unanswered = False
        host = f'[{settings.host}]' if ':' in settings.host else settings.host
        #: ``host:port``, to name the relay in messages.
        self.where = f'{host}:{settings.port}'

    def __repr__(self) -> str:
        return f'<SMTPConnection to {self.where} alive={self.alive}>'

    def __enter__(self) -> SMTPConnection:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """True while the session can carry another message."""
        return (
            self._smtp is not None
            and self._smtp.sock is not None
            and self._deadline.fired is None
        )

    @property
    def timed_out(self) -> bool:
        """True when the last session ended because a phase ran out of time."""
        return self._deadline.fired == 'timeout'

    def cut(self, after: float = 0.0) -> None:
        """End the session ``after`` seconds from now at the latest.

        Safe from any thread and from a signal handler. Whatever the session
        is waiting for then fails as a :class:`TemporaryDeliveryError`; a
        session opened later on this connection is cut at the same time.
        """
        self._deadline.cut(after)

    def open(self) -> None:
        """Connect, greet, secure and log in; raise a DeliveryError if not.

        All of it is one phase: ``mail.timeout`` seconds in all.
        """
        self.close()
        s = self.settings
        if s.username and not (s.tls or s.ssl) and not is_loopback(s.host):
            # Settings refuse this too; MailSettings may be built directly.
            raise ConfigurationFault(
                f'not sending the password for {s.username!r} to {self.where} '
                'in plain text: turn on mail.tls or mail.ssl'
            )
        if s.username:
            # Before connecting: no session is needed to know. The bytes are
            # not kept, so that no frame of an error holds them.
            _credentials(s)
        context = make_ssl_context(s) if (s.tls or s.ssl) else None
        stage = 'connect'
        refused: DeliveryError | None = None
        try:
            with self._deadline:
                stage = 'name lookup'
                addresses = _lookup(s.host, s.port, self._deadline.left())
                stage = 'connect'
                smtp = self._connect(context, addresses)
                stage = 'EHLO'
                smtp.ehlo_or_helo_if_needed()
                if s.tls:
                    if not smtp.has_extn('starttls'):
                        raise ConfigurationFault(
                            f'{self.where} does not offer STARTTLS and mail.tls '
                            'is on: not sending anything in plain text'
                        )
                    stage = 'STARTTLS'
                    smtp.starttls(context=context)  # raises unless 220
                    stage = 'EHLO'
                    smtp.ehlo_or_helo_if_needed()
                if s.username:
                    stage = 'AUTH'
                    refused = self._login(smtp)
        except DeliveryError:
            self.close()
            raise
        except (smtplib.SMTPException, OSError) as exc:
            error = self._error(exc, stage, setup=True)
            log.debug('%s', error)
            self.close()
            raise error from exc
        except BaseException:  # a bug, an interrupt: no half-open session
            self.close()
            raise
        if refused is not None:
            log.debug('%s', refused)
            self.close()
            # Raised here, outside any except clause: nothing that saw the
            # credentials is its cause, its context or in its traceback.
            raise refused
        log.debug(
            'connected to %s (tls: %s, login: %s)',
            self.where,
            bool(context),
            s.username,
        )

    def _connect(
        self, context: ssl.SSLContext | None, addresses: list[tuple[Any, ...]]
    ) -> smtplib.SMTP:
        """The socket made here and handed to smtplib, greeting read.

        Not smtplib's ``connect()``: it reads the greeting before the socket
        could be watched by the deadline, and its ``SMTP_SSL`` does the TLS
        handshake there too.
        """
        s = self.settings
        smtp = self._smtp = self.smtp_class(
            local_hostname=s.message_id_domain, timeout=s.timeout
        )
        # The name smtplib's starttls() checks the certificate against; its
        # constructor sets it only when it connects by itself.
        smtp._host = s.host  # type: ignore[attr-defined]  # private in typeshed
        smtp.sock = self._open_socket(addresses)
        self._deadline.watch(smtp.sock)
        if s.ssl:
            assert context is not None
            smtp.sock = context.wrap_socket(smtp.sock, server_hostname=s.host)
        code, reply = smtp.getreply()
        if code != 220:
            raise smtplib.SMTPConnectError(code, reply)
        return smtp

    def _open_socket(self, addresses: list[tuple[Any, ...]]) -> socket.socket:
        """A TCP connection to the relay, trying its addresses in turn.

        Unlike ``socket.create_connection``, which gives every address a
        full ``mail.timeout``, all attempts together get what is left of the
        setup phase, and no more than a :meth:`cut` allows; so does the name
        lookup that found ``addresses`` (see :func:`_lookup`).
        """
        s = self.settings
        last: OSError = TimeoutError(f'no address of {s.host} to connect to')
        for family, kind, proto, _, address in addresses:
            left = self._deadline.left()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(s.timeout, left))
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.settimeout(s.timeout)
            return sock
        self._deadline.left()  # marks a cut that ended the attempts
        raise last

    def _login(self, smtp: smtplib.SMTP) -> DeliveryError | None:
        """AUTH; None when logged in, else why not. Never raises.

        Whatever goes wrong becomes a new error made from the exception's
        kind and reply code only: the exception's traceback holds the
        credentials in its frames, and a relay may echo them in its reply.
        """
        offered = smtp.esmtp_features.get('auth', '').upper().split()
        known = [m for m in AUTH_MECHANISMS if m in offered]
        if not smtp.has_extn('auth'):
            return ConfigurationFault(
                f'{self.where} during AUTH: SMTP AUTH extension not supported '
                'by server, and mail.username is set'
            )
        if not known:
            return ConfigurationFault(
                f'{self.where} offers AUTH {" ".join(offered)}, none of which '
                f'pyramid_txmail speaks ({", ".join(AUTH_MECHANISMS)})'
            )
        try:
            for mechanism in known:
                code, enhanced = _authenticate(
                    smtp, mechanism, *_credentials(self.settings)
                )
                # 504: the relay does not take this mechanism after all.
                if code != 504:
                    break
        except Exception as exc:  # whatever it is, it is rewritten
            return self._auth_error(exc)
        if code in (235, 503):  # 503: already authenticated
            return None
        msg = (
            f'{self.where} answered AUTH with {code}{enhanced}: the login as '
            f'{self.settings.username!r} was refused (the reply text is not '
            'shown: a relay may echo the credentials)'
        )
        if code == 421:
            smtp.close()
        if 400 <= code < 500:
            return TemporaryDeliveryError(msg, code=code)
        return ConfigurationFault(msg, code=code)

    def _auth_error(self, exc: Exception) -> DeliveryError:
        """The error for an exception raised during AUTH, free of secrets."""
        if isinstance(exc, smtplib.SMTPResponseException) or not isinstance(
            exc, OSError
        ):
            # A reply, or something unforeseen (a garbled challenge): its
            # text may hold what was sent, so only its kind is named.
            return ConfigurationFault(
                f'AUTH with {self.where} failed: {type(exc).__name__}'
            )
        return self._error(exc, 'AUTH', setup=True)

    @property
    def pipelining(self) -> bool:
        """Whether this session pipelines (RFC 2920): the relay offers it and
        ``mail.pipelining`` is on."""
        smtp = self._smtp
        return (
            self.settings.pipelining
            and smtp is not None
            and bool(smtp.has_extn('pipelining'))
        )

    def send(self, envelope: Envelope, data: bytes) -> Accepted:
        """Hand one message to the relay.

        ``data`` is the message with CRLF line endings (any bare CR or LF is
        made a CRLF, as strict relays refuse them). Returns the recipients
        refused while others were accepted, as ``{address: (code, reply)}``
        (an :class:`Accepted`, which has the relay's reply to the data too);
        raises a :class:`DeliveryError` when the message was not accepted.

        With a relay that offers PIPELINING (RFC 2920; every major MTA does)
        MAIL, the RCPTs and DATA go in one write and their replies are read
        together: two round trips per message instead of three or more (see
        :class:`~pyramid_txmail.smtp.pipeline.Pipeline`, which sends many).
        """
        smtp = self._smtp
        if smtp is None or smtp.sock is None:
            raise TemporaryDeliveryError(f'not connected to {self.where}')
        if self.pipelining:
            from .pipeline import Pipeline  # it builds on this module

            [(_, outcome)] = Pipeline[None](self, ahead=False).submit(
                None, envelope, data
            )
            if isinstance(outcome, DeliveryError):
                raise outcome
            return outcome
        return self._lockstep(smtp, envelope, data)

    def _lockstep(
        self, smtp: smtplib.SMTP, envelope: Envelope, data: bytes
    ) -> Accepted:
        """One command, one reply: smtplib's ``sendmail()``, but for the
        envelope, which goes out exactly as given.

        ``smtp.mail()``/``rcpt()`` would pass each address through
        :func:`email.utils.parseaddr`, a second reading that could differ
        from the one :meth:`_ready` checked; the envelope is in RFC 5321 form
        already. As in ``sendmail()``, every recipient is tried, refusals
        are collected, and only all of them refused fails the message.
        """
        options, data = self._ready(smtp, envelope, data)
        smtp.command_encoding = 'utf-8' if envelope.smtputf8 else 'ascii'
        params = ''.join(f' {option}' for option in options)
        refused: Refusals = {}
        try:
            self._stage = 'MAIL FROM'
            with self._deadline:
                smtp.putcmd('mail', f'FROM:<{envelope.sender}>{params}')
                code, reply = smtp.getreply()
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, envelope.sender)
            self._stage = 'RCPT TO'
            for recipient in envelope.recipients:
                with self._deadline:
                    smtp.putcmd('rcpt', f'TO:<{recipient}>')
                    code, reply = smtp.getreply()
                _check_readable(code, reply)
                if code not in (250, 251):
                    refused[recipient] = (code, _text(reply))
                if code == 421:  # closing: nothing more will come
                    break
            if len(refused) == len(envelope.recipients) or code == 421:
                raise self._refused(refused)
            self._stage = 'DATA'
            with self._deadline:
                code, reply = smtp.data(data)  # raises unless DATA got 354
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        except DeliveryError as error:
            self._recover(smtp, error)
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise self._failed(smtp, exc) from exc
        return self._accepted(envelope, refused, code, reply)

    def _ready(
        self, smtp: smtplib.SMTP, envelope: Envelope, data: bytes
    ) -> tuple[list[str], bytes]:
        """MAIL FROM parameters and the data to send, or why it cannot go."""
        options = []
        if envelope.smtputf8:
            if not smtp.has_extn('smtputf8'):
                needed = next(
                    a
                    for a in (envelope.sender, *envelope.recipients)
                    if not a.isascii()
                )
                raise PermanentDeliveryError(
                    f'the relay {self.where} does not offer SMTPUTF8, '
                    f'needed for {needed}'
                )
            options.append('SMTPUTF8')
        # prepare() writes only valid mailboxes; a queue file written by an
        # older version or by hand may hold anything, and an address must
        # not break the command line or add a parameter to it.
        # The null reverse-path, <>, is a valid sender.
        senders = (envelope.sender,) if envelope.sender else ()
        for address in (*senders, *envelope.recipients):
            if not is_mailbox(address):
                broken = '\r' in address or '\n' in address
                raise PermanentDeliveryError(
                    f'the envelope address {address!r} '
                    + ('holds a line break' if broken else 'is not an RFC 5321 mailbox')
                )
        if _has_bare_cr_or_lf(data):
            data = _ANY_EOL.sub(b'\r\n', data)
        if not data.isascii() and smtp.has_extn('8bitmime'):
            options.append('BODY=8BITMIME')
        if smtp.has_extn('size'):
            options.append(f'SIZE={len(data)}')
        return options, data

    def _accepted(
        self, envelope: Envelope, refused: Refusals, code: int, reply: bytes
    ) -> Accepted:
        """Log an accepted message; its outcome, with the relay's reply."""
        log.info(
            'relay %s accepted a message from %s for %d of %d recipient(s)',
            self.where,
            envelope.sender,
            len(envelope.recipients) - len(refused),
            len(envelope.recipients),
        )
        if refused:
            log.info('relay %s refused %s', self.where, _describe(refused))
        return Accepted(refused, reply=f'{code} {_text(reply)}')

    def _failed(self, smtp: smtplib.SMTP, exc: Exception) -> DeliveryError:
        """The DeliveryError for ``exc``, the session recovered or closed."""
        error = self._error(exc, self._stage, setup=False)
        error.__cause__ = exc
        self._recover(smtp, error)
        return error

    def check(self) -> bool:
        """Whether the open session can carry another transaction: the relay
        answers RSET with 250 within ``mail.timeout``.

        For a session kept open between transactions (see :mod:`.pool`),
        which the relay may have closed meanwhile, or answer with ``421``.
        A session that fails the check is dropped (:meth:`drop`) and False
        returned; nothing is raised. :attr:`unanswered` says whether it
        failed for want of an answer in time.
        """
        smtp = self._smtp
        code = None
        self.unanswered = False
        if smtp is not None and self.alive:
            try:
                with self._deadline:
                    code, _ = smtp.rset()
            except (smtplib.SMTPException, OSError) as exc:
                log.debug('the idle session with %s is gone: %s', self.where, exc)
                # The deadline, or a single read's timeout (see _error).
                self.unanswered = self.timed_out or isinstance(
                    exc.__context__, TimeoutError
                )
        if code == 250:
            return True
        if code is not None:
            log.debug('the session with %s answered RSET with %s', self.where, code)
        self.drop()
        return False

    def quiet(self) -> bool:
        """Whether the open session has nothing to read: the relay has sent
        nothing since its last reply, not even the end of the connection.

        The check of a session given back to the pool a moment ago (see
        :mod:`.pool`), without a round trip: a relay that ends a session
        answers ``421`` or closes it, and either leaves something to read.
        """
        sock = self._smtp.sock if self._smtp is not None and self.alive else None
        if sock is None:
            return False
        # What smtplib read ahead with the last reply is not seen here (the
        # relay sent it unasked in the same packet): a 421 among it answers
        # the next MAIL, and direct delivery sends that message again.
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return not poller.poll(0)

    def drop(self) -> None:
        """Close without a word to the relay (no QUIT).

        For a session whose relay has nothing more to say (it failed
        :meth:`check`), or that belongs to another process: a child forked
        with the parent's session open must leave the parent's conversation
        alone, and only closes its copies of the descriptors.
        """
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()
        self._deadline.release()

    def close(self, *, wait: bool = True) -> None:
        """Say QUIT and close. Errors are ignored: what was sent was sent.

        Without ``wait``, QUIT is sent and its answer not awaited: for
        sessions closed in passing (idle too long, or at exit), where a
        relay that no longer answers would hold the caller ``mail.timeout``
        for each one.
        """
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if self._deadline.fired is None:  # else the socket is shut down
                with self._deadline:
                    if wait:
                        smtp.quit()
                    else:
                        smtp.send('QUIT\r\n')
        except (smtplib.SMTPException, OSError) as exc:
            log.debug('QUIT to %s failed, ignored: %s', self.where, exc)
        finally:
            smtp.close()
            self._deadline.release()

    # -- failures

    def _recover(self, smtp: smtplib.SMTP, error: DeliveryError) -> None:
        """Leave the session ready for the next message, or closed."""
        if error.code in (421, _UNREADABLE):
            # The relay is closing the channel (RFC 5321, 3.8), or the
            # replies can no longer be matched to the commands.
            smtp.close()
        elif smtp.sock is not None:
            # smtplib resets after most refusals, not after DATA refused
            # before the content: a second RSET is harmless.
            with contextlib.suppress(smtplib.SMTPException, OSError), self._deadline:
                code, _ = smtp.rset()
                if code != 250:
                    # 421 (closing), or an answer RSET must not have: the
                    # next message goes over a new session, charged nothing.
                    smtp.close()
        log.debug('%s', error)

    def _refused(self, refused: Refusals) -> DeliveryError:
        temporary = [code for code, _ in refused.values() if 400 <= code < 500]
        cls = TemporaryDeliveryError if temporary else PermanentDeliveryError
        codes = temporary or [code for code, _ in refused.values()]
        # A 421 anywhere ends the session (see _recover), whatever came first.
        code = 421 if 421 in codes else next(iter(codes), None)
        return cls(
            f'{self.where} refused every recipient: {_describe(refused)}',
            code=code,
            recipients=refused,
        )

    def _error(self, exc: Exception, stage: str, *, setup: bool) -> DeliveryError:
        """Translate an smtplib/ssl/socket exception raised during ``stage``.

        ``setup`` is true before any message was sent (connect, EHLO,
        STARTTLS, AUTH): a 5xx there is our configuration's problem, not a
        message's.
        """
        where = self.where
        if self._deadline.fired == 'cut':
            return TemporaryDeliveryError(
                f'the session with {where} was cut short during {stage}: '
                'delivery is stopping'
            )
        # The deadline, or a single read's timeout (smtplib turns that into
        # SMTPServerDisconnected, the TimeoutError its context).
        if (
            self._deadline.fired == 'timeout'
            or isinstance(exc, TimeoutError)
            or isinstance(exc.__context__, TimeoutError)
        ):
            return TemporaryDeliveryError(
                f'{where} did not answer {stage} within {self.settings.timeout}s'
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            if isinstance(exc.smtp_error, str):
                # smtplib's own words, not the relay's: its reply was garbled.
                return TemporaryDeliveryError(
                    f'{where} sent an unreadable reply to {stage}: {exc.smtp_error}'
                )
            code = exc.smtp_code
            msg = f'{where} answered {stage} with {code} {_text(exc.smtp_error)}'
            if 400 <= code < 500:
                return TemporaryDeliveryError(msg, code=code)
            if setup or code == 530:  # 530: authentication or STARTTLS required
                return ConfigurationFault(msg, code=code)
            if 500 <= code < 600:
                return PermanentDeliveryError(msg, code=code)
            return TemporaryDeliveryError(msg, code=code)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TemporaryDeliveryError(
                f'{where} closed the connection during {stage} ({exc})'
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConfigurationFault(
                f'the certificate of {where} failed verification: '
                f'{exc.verify_message} (see mail.cafile, mail.tls_verify)'
            )
        if isinstance(exc, ssl.SSLError):
            return ConfigurationFault(f'TLS with {where} failed: {exc}')
        return TemporaryDeliveryError(f'cannot reach {where} ({stage}): {exc}')


def _check_readable(code: int, reply: bytes) -> None:
    """Raise for a reply without a code (smtplib's -1): neither an
    acceptance nor a refusal of the recipient, and the replies that follow
    may belong to other commands."""
    if code == _UNREADABLE:
        raise smtplib.SMTPResponseException(code, reply)


def _has_bare_cr_or_lf(data: bytes) -> bool:
    # Three counts beat a look-behind search by an order of magnitude.
    pairs = data.count(b'\r\n')
    return data.count(b'\r') != pairs or data.count(b'\n') != pairs


class Accepted(dict[str, tuple[int, str]]):
    """A message the relay accepted: the recipients it refused, as
    :data:`~pyramid_txmail.exceptions.Refusals` (empty when it took them
    all), plus ``reply``, its answer to the data (``250 2.0.0 Ok: queued as
    4XyZ``), for the queue's record of what was sent. A dict as before for
    every caller that only wants the refusals."""

    def __init__(self, refused: Refusals, *, reply: str):
        super().__init__(refused)
        self.reply = reply


def _text(reply: bytes) -> str:
    return ' '.join(reply.decode('utf-8', 'replace').split())


def _describe(refused: Refusals) -> str:
    """The first few refusals in full, then how many more: a relay's limit
    can refuse thousands, and one log line must stay readable."""
    shown = ', '.join(
        f'{a} ({code} {reply})'
        for a, (code, reply) in list(refused.items())[:SHOWN_REFUSALS]
    )
    more = len(refused) - SHOWN_REFUSALS
    return f'{shown} and {more} more' if more > 0 else shown


def _credentials(settings: MailSettings) -> tuple[bytes, bytes]:
    """Username and password as sent in AUTH: UTF-8 (RFC 4616 for PLAIN).

    Raises :class:`ConfigurationFault` naming the key, never the value; the
    frame it is raised from holds neither.
    """
    problem = _credentials_problem(settings)
    if problem is not None:
        raise ConfigurationFault(f'{problem}; not logging in')
    return (
        (settings.username or '').encode('utf-8'),
        (settings.password or '').encode('utf-8'),
    )


def _credentials_problem(settings: MailSettings) -> str | None:
    for key, value in (
        ('mail.username', settings.username),
        ('mail.password', settings.password),
    ):
        try:
            data = (value or '').encode('utf-8')
        except UnicodeEncodeError:
            # Not raised from here: the UnicodeEncodeError holds the value.
            return f'{key} cannot be encoded as UTF-8 (it holds a lone surrogate)'
        if b'\0' in data:
            return f'{key} holds a NUL character, which AUTH cannot carry'
    return None


def _authenticate(
    smtp: smtplib.SMTP, mechanism: str, user: bytes, password: bytes
) -> tuple[int, str]:
    """One AUTH exchange: the final reply code and its enhanced status code
    (``' 5.7.8'`` or ``''``), never the reply's text."""
    if mechanism == 'PLAIN':
        # RFC 4954 initial response: one round trip.
        code, reply = smtp.docmd(
            'AUTH', 'PLAIN ' + _b64(b'\0' + user + b'\0' + password)
        )
    elif mechanism == 'LOGIN':
        code, reply = smtp.docmd('AUTH', 'LOGIN ' + _b64(user))
        if code == 334:
            code, reply = smtp.docmd(_b64(password))
    else:  # CRAM-MD5, RFC 2195
        code, reply = smtp.docmd('AUTH', 'CRAM-MD5')
        if code == 334:
            challenge = base64.b64decode(reply, validate=True)
            digest = hmac.new(password, challenge, 'md5').hexdigest().encode()
            code, reply = smtp.docmd(_b64(user + b' ' + digest))
    if code == 334:
        # Still asking: cancel (RFC 4954, 4) and take the refusal.
        code, reply = smtp.docmd('*')
    match = _ENHANCED_CODE.match(reply.decode('ascii', 'replace'))
    return code, f' {match.group()}' if match else ''


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')
