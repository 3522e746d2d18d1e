"""Shared test dummies."""

from __future__ import annotations

import email
import email.policy
import socket
import time
from email.message import EmailMessage

from zope.interface import implementer

from pyramid_txmail.interfaces import IImmediateDelivery, IPendingMail

#: ``counts()`` of an empty queue directory.
EMPTY_COUNTS = dict.fromkeys(
    (
        'queued',
        'sending',
        'deferred',
        'failed',
        'held',
        'unreadable',
        'legacy',
        'unpublished',
    ),
    0,
)


def make_mail(n: int = 0, recipients: tuple[str, ...] = ('to@example.com',)):
    """A small PreparedMail, without going through the message builder."""
    from pyramid_txmail.message import Envelope, PreparedMail

    message_id = f'<{n}@test>'
    data = (
        f'From: from@example.com\r\nTo: {", ".join(recipients)}\r\n'
        f'Subject: test {n}\r\nMessage-ID: {message_id}\r\n\r\nbody {n}\r\n'
    ).encode()
    return PreparedMail(message_id, Envelope('from@example.com', recipients), data)


@implementer(IImmediateDelivery)
class RecordingDelivery:
    """Records each protocol step as (step, [message ids]) in ``calls``."""

    def __init__(self, name: str = 'd', calls: list | None = None):
        self.name = name
        self.calls = [] if calls is None else calls
        self.fail_vote: BaseException | None = None
        self.fail_step: str | None = None

    def vote(self, mails):
        ids = [m.message_id for m in mails]
        if self.fail_vote is not None:
            raise self.fail_vote
        self.calls.append((self.name, 'vote', ids))
        return RecordingPending(self, ids)

    def send_now(self, mail):
        self.calls.append((self.name, 'send_now', [mail.message_id]))
        return {}


@implementer(IPendingMail)
class RecordingPending:
    def __init__(self, delivery: RecordingDelivery, ids: list[str]):
        self.delivery = delivery
        self.ids = ids

    def _record(self, step: str) -> None:
        if self.delivery.fail_step == step:
            raise RuntimeError(f'{step} broke')
        self.delivery.calls.append((self.delivery.name, step, self.ids))

    def finish(self):
        self._record('finish')

    def abort(self):
        self._record('abort')

    def after_commit(self):
        self._record('after_commit')


class FailingVoteDataManager:
    """A data manager (another database, say) whose vote fails."""

    def __init__(self, transaction_manager, key='~zzz'):
        self.transaction_manager = transaction_manager
        self.key = key

    def sortKey(self):
        return self.key

    def abort(self, txn):
        pass

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        raise RuntimeError('the database refused')

    def tpc_finish(self, txn):  # pragma: no cover - never reached
        pass

    def tpc_abort(self, txn):
        pass


class SecondPhaseFailingDataManager(FailingVoteDataManager):
    """A data manager (sorted after ours) whose ``tpc_finish`` fails: the
    transaction package then calls every ``tpc_abort``, also of the data
    managers that have finished."""

    def tpc_vote(self, txn):
        pass

    def tpc_finish(self, txn):
        raise RuntimeError('the storage failed in the second phase')


def free_port() -> int:
    """A loopback port nobody listens on (until a test does)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class FakeClock:
    """Wall clock and monotonic clock in one; ``wait`` advances it."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now
        self.waits: list[float] = []
        self.stop_after: int | None = None

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def message(**kw):
    """A small valid :class:`~pyramid_txmail.Message`; ``kw`` overrides."""
    from pyramid_txmail import Message

    kw.setdefault('subject', 'Hi')
    kw.setdefault('sender', 'from@example.com')
    kw.setdefault('recipients', ['to@example.com'])
    kw.setdefault('body', 'hello')
    return Message(**kw)


def email_message(headers: dict[str, str], body: str | None = 'hello') -> EmailMessage:
    """A stdlib EmailMessage with ``headers`` in order and a text body."""
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name] = value
    if body is not None:
        msg.set_content(body)
    return msg


def parse_mail(data: bytes) -> EmailMessage:
    """Wire bytes (CRLF) read back as Python text (LF) sees them."""
    return email.message_from_bytes(
        data.replace(b'\r\n', b'\n'), policy=email.policy.default
    )


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    """``predicate()``'s first true result, polled; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f'timed out after {timeout}s'
        time.sleep(interval)


def in_forked_child(check, timeout: float = 30.0) -> bool:
    """Run ``check()`` in a child forked now and return what it returned.

    The child reports through a pipe and ends with ``os._exit`` (no
    atexit, no pytest teardown in it); a child that hangs or dies counts
    as False after ``timeout`` seconds and is killed.
    """
    import os
    import select
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage is not kept
        try:
            os.write(write_end, b'1' if check() else b'0')
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready = select.select([read_end], [], [], timeout)[0]
        return bool(ready) and os.read(read_end, 1) == b'1'
    finally:
        os.kill(pid, signal.SIGKILL)  # gone already, or hanging
        os.waitpid(pid, 0)
        os.close(read_end)
