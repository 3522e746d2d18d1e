"""RFC 2920 pipelining: many messages over one session, one round trip each.

A :class:`Pipeline` is pushed messages one at a time with
:meth:`~Pipeline.submit` and hands back each outcome as soon as it is known,
so that its caller claims, sends and records in plain order::

    pipeline = Pipeline(conn)
    for key, envelope, data in messages:
        record(pipeline.submit(key, envelope, data))
        if not conn.alive:
            break
    record(pipeline.finish())
    put_back(pipeline.abandon())   # submitted, never accepted

While pipelining, a message's MAIL, RCPTs and DATA go in one write; its
content goes in the next, together with the next message's commands
(``ahead``), so a message's outcome comes with the next submission or with
:meth:`~Pipeline.finish`. With ``late`` the relay's answer to a content is
not awaited after writing it, but read by the next submission (or
:meth:`~Pipeline.settle`), so that the caller can work meanwhile. Every
reply is read, whatever the earlier ones were, so that the session stays
in step. Without pipelining (the relay does
not offer it, or ``mail.pipelining`` is off) each message goes lock-step
through :meth:`SMTPConnection.send <.session.SMTPConnection.send>` and
its outcome comes back from its own submission.
"""

from __future__ import annotations

import re
import smtplib
from typing import Generic, TypeVar

from pyramid_txmail.exceptions import DeliveryError, Refusals
from pyramid_txmail.message import Envelope

from .session import _UNREADABLE, Accepted, SMTPConnection, _check_readable, _text, log

__all__ = ['Outcome', 'Pipeline']

K = TypeVar('K')

#: What happened to one message: accepted (the recipients refused while
#: others were accepted, and the relay's reply), or why it was not accepted.
Outcome = Accepted | DeliveryError

# RFC 5321, 4.5.2: a line of the content that starts with a dot gets another.
_LEADING_DOT = re.compile(rb'^\.', re.MULTILINE)


class Pipeline(Generic[K]):
    """Messages pushed one at a time over the open session ``conn``.

    Each message has a caller's ``key``; each outcome comes back once, as
    ``(key, outcome)``, from :meth:`submit` or :meth:`finish`, in the order
    the replies arrive (which need not be the order of submission: a
    message that cannot go at all is answered at once). With ``ahead``
    false, a message's content is not held back for the next message's
    commands: each submission returns its own outcome (for a caller that
    waits between messages, e.g. for a rate limit). With ``late`` (and
    ``ahead``), the answer to a content is read with the submission after
    the one that wrote it, or by :meth:`settle` or :meth:`finish`.

    Keys must be distinct. A message submitted once the session has ended,
    whose commands went with a content that ended it, or whose submission
    raised, gets no outcome: :meth:`abandon` returns its key. It was not
    accepted.
    """

    def __init__(self, conn: SMTPConnection, *, ahead: bool = True, late: bool = False):
        self.conn = conn
        self.ahead = ahead
        self.late = late and ahead
        # Commands written, replies not read yet: (key, envelope, content).
        self._in_flight: tuple[K, Envelope, bytes] | None = None
        # Content written (late), its reply not read yet: (key, envelope,
        # the recipients refused before it).
        self._answering: tuple[K, Envelope, Refusals] | None = None
        # Submitted, no outcome returned: in flight, never written (the
        # session ended first), or interrupted by an exception.
        self._pending: list[K] = []

    def __repr__(self) -> str:
        return f'<Pipeline to {self.conn.where} ahead={self.ahead}>'

    def submit(
        self, key: K, envelope: Envelope, data: bytes
    ) -> list[tuple[K, Outcome]]:
        """Hand over one message; return the outcomes now known (this
        message's, an earlier one's, both or none)."""
        self._pending.append(key)
        return self._answered(self._submit(key, envelope, data))

    def finish(self) -> list[tuple[K, Outcome]]:
        """The outcomes of the messages still in flight, if any."""
        return self._answered(self._finish())

    def settle(self) -> list[tuple[K, Outcome]]:
        """The outcome of the message whose content the relay is answering
        (``late``), if any; a message whose commands alone went out stays
        in flight, for :meth:`finish` or :meth:`abandon`."""
        return self._answered(self._settle())

    def abandon(self) -> list[K]:
        """Stop here: the keys of the messages submitted without an outcome,
        none of which was accepted.

        A message whose commands are on their way is cut off with the
        session (no QUIT, which the relay could take for content), so that
        the relay can accept nothing more. A message whose content went
        out, its reply unread (``late``, without :meth:`settle`), may have
        been accepted: its key is not returned.
        """
        keys, self._pending = self._pending, []
        smtp = self.conn._smtp
        if self._answering is not None:
            key = self._answering[0]
            keys.remove(key)
            log.warning(
                'the reply of %s to a message was not read; it may have accepted it',
                self.conn.where,
            )
        if (self._in_flight or self._answering) is not None and smtp is not None:
            smtp.close()
        self._in_flight = self._answering = None
        return keys

    def _answered(self, outcomes: list[tuple[K, Outcome]]) -> list[tuple[K, Outcome]]:
        for key, _ in outcomes:
            self._pending.remove(key)
        return outcomes

    def _submit(
        self, key: K, envelope: Envelope, data: bytes
    ) -> list[tuple[K, Outcome]]:
        conn = self.conn
        smtp = conn._smtp
        if smtp is None or smtp.sock is None:
            return []  # the session ended: never written
        if not conn.pipelining:
            try:
                return [(key, conn.send(envelope, data))]
            except DeliveryError as error:
                return [(key, error)]
        try:
            options, data = conn._ready(smtp, envelope, data)
        except DeliveryError as error:
            return [(key, error)]  # nothing written: the session is in step
        commands = _commands(envelope, options)
        outcomes = self._settle()
        if not conn.alive:
            # The reply that ended the session came first (here, or read by
            # the caller's settle()): the message in flight was not
            # accepted, and has no outcome.
            self._in_flight = None
            return outcomes
        if self._in_flight is not None:
            # Its content goes in one write with this message's commands.
            in_flight, self._in_flight = self._in_flight, None
            failure, written = self._offer(smtp, in_flight, commands)
            if failure is not None:
                outcomes.append(failure)
            elif not self.late:
                outcomes.append(self._answer(smtp))
            if written and conn.alive:
                self._in_flight = (key, envelope, _content(data))
            if written or not conn.alive:
                return outcomes
        try:
            conn._stage = 'MAIL FROM'
            with conn._deadline:
                smtp.send(commands)
        except (smtplib.SMTPException, OSError) as exc:
            outcomes.append((key, conn._failed(smtp, exc)))
            return outcomes
        self._in_flight = (key, envelope, _content(data))
        if not self.ahead:
            outcomes += self._finish()
        return outcomes

    def _settle(self) -> list[tuple[K, Outcome]]:
        smtp = self.conn._smtp
        if self._answering is None or smtp is None:
            return []
        return [self._answer(smtp)]

    def _finish(self) -> list[tuple[K, Outcome]]:
        outcomes = self._settle()
        if self._in_flight is None:
            return outcomes
        in_flight, self._in_flight = self._in_flight, None
        if outcomes and not self.conn.alive:
            return outcomes  # as in _submit: never accepted, no outcome
        smtp = self.conn._smtp
        assert smtp is not None  # closed with a message in flight: a bug
        failure, _ = self._offer(smtp, in_flight, b'')
        outcomes.append(self._answer(smtp) if failure is None else failure)
        return outcomes

    def _offer(
        self, smtp: smtplib.SMTP, in_flight: tuple[K, Envelope, bytes], commands: bytes
    ) -> tuple[tuple[K, Outcome] | None, bool]:
        """Read the replies to a message's commands; on 354 write its content
        with ``commands``, the relay's reply to it then awaited (see
        :meth:`_answer`). Returns the outcome if the message failed, and
        whether ``commands`` were written."""
        conn = self.conn
        key, envelope, content = in_flight
        try:
            with conn._deadline:
                refused = self._start_data(smtp, envelope)
        except DeliveryError as error:
            conn._recover(smtp, error)
            return (key, error), False
        except (smtplib.SMTPException, OSError) as exc:
            return (key, conn._failed(smtp, exc)), False
        conn._stage = 'DATA'
        try:
            with conn._deadline:
                smtp.send(content + commands)
        except (smtplib.SMTPException, OSError) as exc:
            return (key, self._content_failed(smtp, exc)), True
        self._answering = (key, envelope, refused)
        return None, True

    def _answer(self, smtp: smtplib.SMTP) -> tuple[K, Outcome]:
        """Read the relay's reply to the content last written."""
        assert self._answering is not None
        conn = self.conn
        key, envelope, refused = self._answering
        self._answering = None
        conn._stage = 'DATA'
        try:
            with conn._deadline:
                code, reply = smtp.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        except (smtplib.SMTPException, OSError) as exc:
            return key, self._content_failed(smtp, exc)
        return key, conn._accepted(envelope, refused, code, reply)

    def _content_failed(self, smtp: smtplib.SMTP, exc: Exception) -> DeliveryError:
        # No RSET: the end of the content ended the mail transaction, and
        # the next message's commands may already be on their way.
        failure = self.conn._error(exc, 'DATA', setup=False)
        failure.__cause__ = exc
        if failure.code in (421, _UNREADABLE):
            smtp.close()
        log.debug('%s', failure)
        return failure

    def _start_data(self, smtp: smtplib.SMTP, envelope: Envelope) -> Refusals:
        """Read the replies to MAIL, the RCPTs and DATA; 354 or raise."""
        conn = self.conn
        conn._stage = 'MAIL FROM'
        mail_code, mail_reply = smtp.getreply()
        # Unreadable, MAIL may have been taken: a lone dot after the 354
        # below would deliver an empty message.
        _check_readable(mail_code, mail_reply)
        if mail_code == 421:  # closing: nothing more will come
            raise smtplib.SMTPSenderRefused(mail_code, mail_reply, envelope.sender)
        conn._stage = 'RCPT TO'
        refused: Refusals = {}
        for recipient in envelope.recipients:
            code, reply = smtp.getreply()
            _check_readable(code, reply)
            if code not in (250, 251):
                refused[recipient] = (code, _text(reply))
            if code == 421:
                raise conn._refused(refused)
        conn._stage = 'DATA'
        code, reply = smtp.getreply()
        if mail_code != 250 or len(refused) == len(envelope.recipients):
            if code == 354:
                # A relay that took DATA regardless gets an empty message,
                # which it refuses for want of a sender or a recipient.
                smtp.send(b'.\r\n')
                smtp.getreply()
            conn._stage = 'MAIL FROM'
            if mail_code != 250:
                raise smtplib.SMTPSenderRefused(mail_code, mail_reply, envelope.sender)
            raise conn._refused(refused)
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        return refused


def _commands(envelope: Envelope, options: list[str]) -> bytes:
    """MAIL, RCPT for each recipient and DATA, as one pipelined group."""
    params = ''.join(f' {option}' for option in options)
    lines = [
        f'MAIL FROM:<{envelope.sender}>{params}',
        *(f'RCPT TO:<{recipient}>' for recipient in envelope.recipients),
        'DATA',
    ]
    encoding = 'utf-8' if envelope.smtputf8 else 'ascii'
    return ''.join(f'{line}\r\n' for line in lines).encode(encoding)


def _content(data: bytes) -> bytes:
    """The message as sent after DATA: dot-stuffed, ended by a lone dot."""
    if data.startswith(b'.') or b'\n.' in data:
        data = _LEADING_DOT.sub(b'..', data)
    if not data.endswith(b'\r\n'):
        data += b'\r\n'
    return data + b'.\r\n'
