"""The queue protocol: what the processor and the command line need of a queue.

Two backends implement it: the queue directory
(:class:`~pyramid_txmail.queue.maildir.MailQueue`) and the PostgreSQL
outbox. The typing is structural: a backend neither imports nor subclasses
these classes; mypy checks it where a backend is passed as a :class:`Queue`.

The contract, for every backend:

* :meth:`Queue.start_pass` begins a processor's pass; :meth:`QueuePass.claim`
  then hands out the due messages one at a time, in queue order, each to
  exactly one claimer however many processors share the queue.
* A :class:`Claim` gets exactly one outcome (:meth:`~Claim.done`,
  :meth:`~Claim.defer`, :meth:`~Claim.fail`, :meth:`~Claim.set_aside`,
  :meth:`~Claim.abandon` or :meth:`~Claim.release`). An outcome that cannot
  be stored raises :class:`~pyramid_txmail.exceptions.QueueError` and leaves
  the claim held, so that the caller can record another one instead; a
  second outcome after one was recorded raises QueueError too.
* The read-only methods (:meth:`~Queue.counts`, :meth:`~Queue.list`,
  :meth:`~Queue.read`, :meth:`~Queue.read_fault`) never create or change
  anything, so ``pyramid-txmail status`` run as another user (or as root)
  leaves the queue as it was.

The producer side (writing a committed message) is no part of it: each
backend has its own delivery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..message import Envelope

__all__ = ['STATE_NAMES', 'Claim', 'Entry', 'Fault', 'Queue', 'QueuePass']

#: The states a message can be in, as :meth:`Queue.list` takes and
#: :meth:`Queue.counts` names them (``pyramid-txmail list --state``). A
#: backend may add its own (``legacy``: a repoze.sendmail file waiting to be
#: adopted; ``sent``: an outbox row kept for audit).
STATE_NAMES = ('queued', 'sending', 'deferred', 'failed', 'held')


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as :meth:`Queue.list` and :meth:`Queue.read` show it.

    ``id`` is the backend's (the Maildir file name, the outbox row id);
    ``state`` one of :data:`STATE_NAMES`, or ``legacy`` or ``sent``;
    ``age`` seconds since it was queued; ``due`` the time a deferred
    message is tried again (``None`` in other states); ``subject`` the
    decoded Subject header (``None`` if there is none). ``message_id``,
    ``sender`` and ``queued_at`` are ``None`` for an entry that cannot be
    read, whose ``last_error`` says why (``'unreadable: ...'``).
    """

    id: str
    state: str
    age: float
    attempts: int
    recipients: tuple[str, ...]
    last_error: str | None
    due: float | None = None
    message_id: str | None = None
    subject: str | None = None
    sender: str | None = None
    queued_at: float | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """The standing configuration fault that paused sending: its ``reason``
    (the error) and ``since`` when (epoch seconds, the first of a row)."""

    reason: str
    since: float


class Claim(Protocol):
    """A message taken for sending, held by its claimer until one outcome
    is recorded (see the module docstring).

    ``data`` is the message exactly as it goes on the wire; ``attempts``,
    ``queued_at`` and ``last_error`` are what the queue stored before this
    attempt.
    """

    id: str
    message_id: str
    envelope: Envelope
    data: bytes
    attempts: int
    queued_at: float
    last_error: str | None

    def done(self, *, reply: str | None = None) -> None:
        """The relay accepted it: it leaves the queue. ``reply`` is the
        relay's answer to the message's data (``250 2.0.0 Ok: queued as
        4XyZ``), for a backend that keeps a record of sent messages."""

    def defer(
        self, error: str, due: float, *, recipients: Iterable[str] | None = None
    ) -> None:
        """A temporary failure: counts the attempt, keeps ``error``, due
        again at ``due``; ``recipients`` replaces the envelope's when given
        (the relay took it for the others)."""

    def fail(self, error: str) -> None:
        """A permanent failure: into the failed state with ``error``."""

    def set_aside(self, reason: str, *, delivered: Iterable[str] = ()) -> None:
        """Failed as it is, without rewriting it (``delivered``: the
        recipients who have it, not sent to again by a retry)."""

    def abandon(self) -> None:
        """Let go of it where it is; a later pass's recovery takes it back."""

    def release(self) -> None:
        """Back to queued, unchanged, due now."""


class QueuePass(Protocol):
    """One processor pass over the messages due when it began."""

    def claim(self) -> Claim | None:
        """The next due message, claimed; ``None`` when none is left."""


class Queue(Protocol):
    """A mail queue as the processor and ``pyramid-txmail`` use it.

    ``name`` identifies it in logs, the command line and the processor
    registry (one processor thread per queue and process): the Maildir's
    path, the outbox's URL without its password.
    """

    name: str

    def clock(self) -> float:
        """The time the queue stamps and compares with (epoch seconds)."""

    # -- the processor

    def start_pass(
        self, *, stale_after: float, horizon: float | None = None
    ) -> QueuePass:
        """Begin a pass: claims older than ``stale_after`` seconds whose
        processor is gone become claimable again; a due time more than
        ``horizon`` seconds ahead counts as due (the clock went back)."""

    def record_fault(self, reason: str) -> None:
        """Note that a configuration fault paused sending; never raises."""

    def clear_fault(self) -> None:
        """Sending works again; never raises."""

    def read_fault(self) -> Fault | None:
        """The standing configuration fault, if any. Read-only."""

    # -- the command line

    def counts(self) -> dict[str, int]:
        """How many messages per state; ``legacy`` and ``unreadable`` (a
        part of ``failed``) too where the backend has them. Read-only."""

    def list(self, states: Iterable[str] | None = None) -> list[Entry]:
        """The messages in ``states`` (every state by default), in queue
        order. Read-only."""

    def read(self, id: str) -> tuple[Entry, bytes]:
        """One message and its bytes; raises
        :class:`~pyramid_txmail.exceptions.UnknownMessage` if there is
        none. Read-only."""

    def flush(self) -> int:
        """Deferred messages become due now; how many."""

    def retry(self, ids: Iterable[str] | None = None) -> int:
        """Failed and deferred messages (``None``: all) become due now; how many."""

    def hold(self, ids: Iterable[str]) -> int:
        """Messages are kept from being sent until released; how many."""

    def release(self, ids: Iterable[str]) -> int:
        """Held messages become due now; how many."""

    def purge(self, ids: Iterable[str] | None = None, *, failed: bool = False) -> int:
        """Delete messages (``failed=True``: the failed ones); how many."""
