"""The queue processor: sends what committed transactions put in the queue.

:class:`QueueProcessor` does one pass at a time (:meth:`~QueueProcessor.run_once`)
or loops (:meth:`~QueueProcessor.run`); it has no thread of its own, so the
command line runs it in the foreground and tests drive it with fake clocks.
:class:`ProcessorThread` runs it in a named daemon thread of a web process,
and :func:`ensure_processor` starts at most one per queue directory and
process.

Outcomes follow Postfix: a temporary failure (4xx, refused or dropped
connection, timeout) defers the message with exponential backoff until
``mail.max_age``; a permanent one (5xx) moves it to the failed area; a
configuration fault (login refused, no STARTTLS, untrusted certificate)
keeps every message and pauses the processor. Each outcome is notified as a
:class:`~pyramid_txmail.events.MailSent` or
:class:`~pyramid_txmail.events.MailFailed` event.

Logger: ``pyramid_txmail.processor``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random as _random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .events import MailEvent, MailFailed, MailSent
from .exceptions import (
    ConfigurationFault,
    DeliveryError,
    PermanentDeliveryError,
    QueueError,
    TemporaryDeliveryError,
)
from .queue.base import Claim, Queue, QueuePass
from .queue.locks import install_fork_hook
from .settings import MailSettings
from .smtp import Accepted, Outcome, Pipeline, SMTPConnection

__all__ = ['PassResult', 'ProcessorThread', 'QueueProcessor', 'ensure_processor']

log = logging.getLogger('pyramid_txmail.processor')

Notify = Callable[[Iterable[MailEvent]], object]

#: Default seconds after which a claim whose lock is free is taken back. The
#: lock alone proves its processor is gone on local file systems; the delay
#: guards file systems where ``flock`` does not work.
STALE_AFTER = 600.0
#: Seconds :meth:`ProcessorThread.stop` waits for the message being sent.
STOP_TIMEOUT = 10.0
THREAD_NAME = 'pyramid_txmail-processor'


def _drop(events: Iterable[MailEvent]) -> None:
    """The notifier of a processor nobody listens to."""


@dataclass
class PassResult:
    """What one pass did: messages sent, deferred, failed and released."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    released: int = 0

    def __add__(self, other: PassResult) -> PassResult:
        return PassResult(
            self.sent + other.sent,
            self.deferred + other.deferred,
            self.failed + other.failed,
            self.released + other.released,
        )


class QueueProcessor:
    """Sends the messages of ``queue`` over SMTP, one pass at a time.

    Collaborators, replaceable for tests and the command line:

    ``connect``
        ``() -> SMTPConnection`` (not yet open); default
        ``SMTPConnection(settings)``.
    ``notify``
        called with a list of events after each outcome, e.g. an
        :class:`~pyramid_txmail.events.Notifier`; default: dropped.
    ``clock``
        wall-clock time, for due times and message age.
    ``monotonic``
        for the rate limit and the pause after a configuration fault.
    ``wait``
        ``wait(seconds) -> bool``: sleep, returning True early when
        :meth:`stop` was requested. The default also ends the idle wait of
        :meth:`run` when :meth:`wake` is called.
    ``random``
        ``() -> float`` in [0, 1), for the backoff's jitter.
    ``stale_after``
        seconds before an unlocked claim is recovered (see :data:`STALE_AFTER`).
    """

    def __init__(
        self,
        queue: Queue,
        settings: MailSettings,
        *,
        connect: Callable[[], SMTPConnection] | None = None,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
        random: Callable[[], float] = _random.random,
        stale_after: float = STALE_AFTER,
    ):
        self.queue = queue
        self.settings = settings
        self._connect = connect or (lambda: SMTPConnection(settings))
        self._notify_fn = notify or _drop
        self._clock = clock
        self._monotonic = monotonic
        self._custom_wait = wait
        self._random = random
        self.stale_after = stale_after
        self._cond = threading.Condition()
        self._stopped = False
        self._woken = False
        self._next_send = float('-inf')  # rate limit: earliest next message
        self._paused_until = float('-inf')  # after a configuration fault
        self._halted = False
        self._conn: SMTPConnection | None = None  # the latest session
        self._cut_at = math.inf  # stop(): sessions end then (time.monotonic)
        # Accepted messages whose outcome could not be recorded at all: kept
        # locked, so that no recovery in this process sends them again.
        self._unrecorded: list[Claim] = []

    def __repr__(self) -> str:
        return f'<QueueProcessor {self.queue.name}>'

    # -- control

    def wake(self) -> None:
        """New messages were published: start the next pass now."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """Let the message whose content went out finish (the relay's
        answer is read and recorded), then return from :meth:`run`; a
        message whose content has not gone yet goes back to the queue
        unsent.

        A session still waiting for the relay ``grace`` seconds from now is
        cut (its message is deferred), whatever the relay does;
        ``math.inf`` waits as long as ``mail.timeout`` per phase allows.
        Safe in a signal handler.
        """
        with self._cond:
            self._stopped = True
            self._cut_at = min(self._cut_at, time.monotonic() + grace)
            self._cut(self._conn)
            self._cond.notify_all()

    def _cut(self, conn: SMTPConnection | None) -> None:
        # Under self._cond, so that a session opened while stop() runs is
        # cut too.
        if conn is not None and self._cut_at < math.inf:
            conn.cut(max(0.0, self._cut_at - time.monotonic()))

    def _wait(self, seconds: float) -> bool:
        if self._custom_wait is not None:
            return self._custom_wait(seconds)
        with self._cond:
            self._cond.wait_for(lambda: self._stopped, seconds)
            return self._stopped

    def _idle(self, seconds: float) -> bool:
        if self._custom_wait is not None:
            return self._custom_wait(seconds)
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._woken, seconds)
            return self._stopped

    # -- the loop

    def run(self) -> None:
        """Pass after pass until :meth:`stop`; between passes wait
        ``mail.queue_interval`` seconds, or less when woken.

        An error in a pass (a broken queue directory, a bug) is logged and
        the next pass tried: a web process's mail must not stop for good.
        """
        while not self._stopped:
            with self._cond:
                # A wake from now on asks for another pass after this one.
                self._woken = False
            try:
                self.run_once()
            except Exception:
                log.exception('mail queue %s: the pass failed', self.queue.name)
            if self._idle(self.settings.queue_interval):
                break

    def run_once(self) -> PassResult:
        """Send what is due now; return what happened.

        Recovers claims of dead processors, promotes deferred messages whose
        time has come, then claims and sends queued messages, each claimed
        just before it goes (while pipelining, one ahead, claimed while the
        relay answers the message before: three in hand at most), at most
        ``mail.queue_batch`` per SMTP connection and ``mail.queue_rate`` per
        second. Stops early when :meth:`stop` is called (after the current
        message), when the relay cannot be reached, or on a configuration
        fault.
        """
        result = PassResult()
        if self._monotonic() < self._paused_until:
            return result
        # A due time further ahead than any backoff: the clock went back.
        source = self.queue.start_pass(
            stale_after=self.stale_after, horizon=self.settings.retry_max * 1.25
        )
        self._halted = False  # stopped during this pass: claim no more
        while claim := self._next(source):
            done, go_on = self._session(claim, source)
            result += done
            if not go_on:
                break
        return result

    def _session(self, first: Claim, source: QueuePass) -> tuple[PassResult, bool]:
        """One SMTP session: ``first`` and the messages claimed after it.
        Returns what it did and whether the pass may go on."""
        try:
            conn = self._connect()
            with self._cond:
                self._conn = conn
                self._cut(conn)
            conn.open()
        except DeliveryError as exc:
            # Nothing was offered: the relay cannot be reached or used now,
            # and the pass ends.
            done, _ = self._failed(first, exc, alive=False)
            return done, False
        except BaseException:
            self._release([first])
            raise
        try:
            return self._send(conn, first, source)
        finally:
            # A failing QUIT is ignored by close(): what was accepted stays
            # sent and is not sent again.
            conn.close()

    def _send(
        self, conn: SMTPConnection, first: Claim, source: QueuePass
    ) -> tuple[PassResult, bool]:
        """``first`` and up to ``mail.queue_batch`` messages in all over
        ``conn``, each claimed just before it goes; record each outcome.
        Returns what was done and whether the pass may go on."""
        # Reading one message ahead would hold a message's content back
        # while the rate limit waits for the next. Reading each reply late
        # lets the next message be claimed while the relay answers.
        ahead = self.settings.queue_rate <= 0
        pipeline = Pipeline[Claim](conn, ahead=ahead, late=ahead)
        result = PassResult()
        sent = 0
        claim: Claim | None = first
        try:
            while claim is not None:
                # The relay's answer to the content sent last, before the
                # next content goes: a stop requested meanwhile lets no
                # other message go.
                outcomes = pipeline.settle()
                if self._stopped:
                    self._release([claim])
                else:
                    outcomes += pipeline.submit(claim, claim.envelope, claim.data)
                done, go_on = self._record(conn, outcomes)
                result += done
                if not go_on:
                    # A content the relay is answering gets its outcome; a
                    # message whose commands alone went out is let go.
                    done, _ = self._record(conn, pipeline.settle())
                    return result + done, False
                sent += 1
                # Claim no more than this connection will take.
                alive = conn.alive and sent < self.settings.queue_batch
                try:
                    claim = self._next(source) if alive else None
                except BaseException:
                    # The relay may have accepted the content it is
                    # answering: record that before the error ends the pass.
                    self._record(conn, pipeline.settle())
                    raise
            done, go_on = self._record(conn, pipeline.finish())
            return result + done, go_on
        finally:
            # Submitted without an outcome (the session ended first, or the
            # pass stops with one in flight, which cuts the session): never
            # accepted, so back to new/ (this pass's listing has moved past).
            self._release(pipeline.abandon())

    def _record(
        self, conn: SMTPConnection, outcomes: list[tuple[Claim, Outcome]]
    ) -> tuple[PassResult, bool]:
        """Record each outcome; return what was done and whether the pass
        may go on (not when stopping: a message in flight is cut off)."""
        result = PassResult()
        go_on = True
        for claim, outcome in outcomes:
            if isinstance(outcome, DeliveryError):
                done, more = self._failed(claim, outcome, alive=conn.alive)
            else:
                done, more = self._sent(claim, outcome), True
            result += done
            go_on = go_on and more
        return result, go_on and not self._stopped

    def _release(self, claims: Iterable[Claim]) -> None:
        """Claims without an outcome: never accepted, so back to new/."""
        for claim in claims:
            try:
                claim.release()
            except QueueError as exc:  # unlocked in cur/: recovery takes it
                log.error('mail %s: %s', claim.message_id, exc)

    def _next(self, source: QueuePass) -> Claim | None:
        """The next message to send, claimed now; None when none is left or
        the processor is stopping."""
        if self._halted:
            return None
        claim = None if self._stopped else source.claim()
        if claim is not None and not self._throttle():  # stopped meanwhile
            self._release([claim])
            claim = None
        self._halted = claim is None
        return claim

    def _throttle(self) -> bool:
        """Wait for ``mail.queue_rate``; False if stopped meanwhile."""
        rate = self.settings.queue_rate
        if rate <= 0:
            return True
        delay = self._next_send - self._monotonic()
        if delay > 0 and self._wait(delay):
            return False
        self._next_send = max(self._monotonic(), self._next_send) + 1.0 / rate
        return True

    # -- outcomes

    def _sent(self, claim: Claim, refused: Accepted) -> PassResult:
        """The relay took the message, for some or all of its recipients
        (``refused``: the others; ``refused.reply``: what it said, which the
        queue may keep)."""
        later = [r for r, (code, _) in refused.items() if 400 <= code < 500]
        # First, before anything else can fail: the record that the relay
        # has it, so that it is never sent again to those who accepted.
        try:
            if later and not self._too_old(claim):
                # The others have it: only those refused for now are tried again.
                error = 'refused for now: ' + _describe(refused, later)
                due = self._due(claim)
                claim.defer(error, due, recipients=later)
                log.warning(
                    'mail %s sent; %s deferred until %s',
                    claim.message_id,
                    _describe(refused, later),
                    _when(due),
                )
            else:
                claim.done(reply=refused.reply)
        except QueueError as exc:
            accepted = [r for r in claim.envelope.recipients if r not in refused]
            self._set_aside(claim, accepted, exc)
        if refused:
            log.warning(
                'mail %s refused for %s', claim.message_id, _describe(refused, refused)
            )
        self.queue.clear_fault()
        self._notify([MailSent(claim.message_id, claim.data, refused)])
        return PassResult(sent=1)

    def _set_aside(self, claim: Claim, accepted: list[str], exc: QueueError) -> None:
        """The relay accepted ``claim`` (for ``accepted``) but the queue could
        not record it: move it aside unchanged, never to be sent again by
        itself; failing that, keep it locked for this processor's life."""
        reason = (
            f'accepted by the relay for {", ".join(accepted)}, but the queue '
            f'could not record it ({exc}); set aside so that it is not sent '
            f'to them again'
        )
        try:
            claim.set_aside(reason, delivered=accepted)
        except QueueError as again:
            self._unrecorded.append(claim)
            log.critical(
                'mail %s: %s; it cannot be set aside either (%s): it stays '
                'locked in cur/ while this processor runs',
                claim.message_id,
                reason,
                again,
            )
            return
        log.error('mail %s: %s', claim.message_id, reason)

    def _failed(
        self, claim: Claim, exc: DeliveryError, *, alive: bool
    ) -> tuple[PassResult, bool]:
        """Record a failure; return what was done and whether the pass may
        go on (``alive``: the session can carry another message)."""
        try:
            return self._record_failure(claim, exc, alive=alive)
        except QueueError as error:
            # Not accepted, so nothing is lost: the claim stays in cur/ and
            # recovery offers it again after stale_after (no disk space needed).
            claim.abandon()
            log.error(
                'mail %s: cannot record its failure (%s): %s; it is tried again '
                'in %d s',
                claim.message_id,
                exc,
                error,
                self.stale_after,
            )
            return PassResult(), alive and not isinstance(exc, ConfigurationFault)

    def _record_failure(
        self, claim: Claim, exc: DeliveryError, *, alive: bool
    ) -> tuple[PassResult, bool]:
        if isinstance(exc, ConfigurationFault):
            # Not this message's fault: keep it, and every other one.
            pause = self.settings.retry_min
            self._paused_until = self._monotonic() + pause
            self.queue.record_fault(str(exc))  # for pyramid-txmail status
            claim.release()
            log.error(
                'mail queue %s: cannot send: %s. Messages stay queued; '
                'trying again in %d s. Check the mail.* settings.',
                self.queue.name,
                exc,
                pause,
            )
            self._notify(
                [MailFailed(claim.message_id, claim.data, exc, permanent=False)]
            )
            return PassResult(released=1), False
        if isinstance(exc, TemporaryDeliveryError) and not self._too_old(claim):
            due = self._due(claim)
            # Recipients refused for good are not tried again (they are in
            # the event's error.recipients); the others, untried ones too, are.
            gone = {r for r, (code, _) in exc.recipients.items() if code >= 500}
            keep = [r for r in claim.envelope.recipients if r not in gone]
            claim.defer(str(exc), due, recipients=keep if gone else None)
            log.warning(
                'mail %s deferred until %s (attempt %d): %s',
                claim.message_id,
                _when(due),
                claim.attempts + 1,
                exc,
            )
            self._notify(
                [MailFailed(claim.message_id, claim.data, exc, permanent=False)]
            )
            # A dead connection (refused, dropped, timed out) would fail every
            # message: charge one attempt, not the whole queue; next pass.
            return PassResult(deferred=1), alive
        reason = str(exc)
        if not isinstance(exc, PermanentDeliveryError):
            days = self.settings.max_age / 86400
            reason = f'{exc} (still failing after mail.max_age, {days:g} days)'
        claim.fail(reason)
        log.error('mail %s failed for good: %s', claim.message_id, reason)
        self._notify([MailFailed(claim.message_id, claim.data, exc, permanent=True)])
        return PassResult(failed=1), alive or exc.permanent

    def _too_old(self, claim: Claim) -> bool:
        """Whether a temporary failure now fails ``claim`` for good.

        It must be older than ``mail.max_age`` by the clock, and have been
        tried (and deferred) often enough for the backoff schedule to span
        ``mail.max_age``. The second rule caps what a forward jump of the
        clock, or a processor that did not run, can do: such time is not
        counted until the attempts catch up. So a first attempt never fails
        a message for its age.
        """
        s = self.settings
        if claim.attempts < 1 or self._clock() - claim.queued_at <= s.max_age:
            return False
        return _schedule(claim.attempts, s.retry_min, s.retry_max) >= s.max_age

    def _due(self, claim: Claim) -> float:
        """When to try again after the message's (attempts + 1)-th failure.

        ``min(retry_max, retry_min * 2**(n-1))`` with a random factor in
        [0.8, 1.2]: after an outage the deferred messages spread out instead
        of all coming due together.
        """
        s = self.settings
        exponent = min(claim.attempts, 64)  # n - 1; 2**64 is past any retry_max
        delay = min(s.retry_max, s.retry_min * 2.0**exponent)
        return self._clock() + delay * (0.8 + 0.4 * self._random())

    def _notify(self, events: list[MailEvent]) -> None:
        try:
            self._notify_fn(events)
        except Exception:
            log.exception('notifying %r failed', events)


def _schedule(attempts: int, retry_min: float, retry_max: float) -> float:
    """Seconds the backoff spans over ``attempts`` deferrals (no jitter)."""
    total = 0.0
    delay = retry_min
    done = 0
    while done < attempts and delay < retry_max:  # bounded: delay doubles
        total += delay
        delay *= 2
        done += 1
    return total + (attempts - done) * retry_max


def _describe(refused: Mapping[str, tuple[int, str]], which: Iterable[str]) -> str:
    return ', '.join(f'{r} ({refused[r][0]} {refused[r][1]})' for r in which)


def _when(due: float) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(due))


# -- in a web process


class ProcessorThread:
    """A :class:`QueueProcessor` in a daemon thread named ``pyramid_txmail-processor``.

    :meth:`stop` lets the message being sent finish (seconds, whatever the
    queue's length). The thread is stopped at interpreter exit, and started
    again in a forked child (gunicorn ``--preload``, uWSGI) if it ran in the
    parent, so that every worker has a working processor rather than the
    copy of a dead thread. ``processor_factory`` builds the processor, again
    after a fork (its locks may have been held by the parent's thread).
    """

    def __init__(
        self,
        queue: Queue,
        settings: MailSettings,
        *,
        notify: Notify | None = None,
        processor_factory: Callable[..., QueueProcessor] = QueueProcessor,
    ):
        self.queue = queue
        self.settings = settings
        self._make: Callable[[], QueueProcessor] = lambda: processor_factory(
            queue, settings, notify=notify
        )
        self.processor: QueueProcessor | None = None
        self._thread: threading.Thread | None = None
        self._wanted = False  # started and not stopped: restart after fork
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f'<ProcessorThread {self.queue.name} alive={self.alive}>'

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; nothing if it is running."""
        if self.alive:
            return
        _install_hooks()
        self.processor = self._make()
        self._thread = threading.Thread(
            target=self.processor.run, name=THREAD_NAME, daemon=True
        )
        self._wanted = True
        self._thread.start()

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> bool:
        """Stop after the current message; return True if the thread ended."""
        self._wanted = False
        if self.processor is not None:
            # A session waiting for the relay is cut a little before the
            # timeout, leaving time to record its message.
            self.processor.stop(math.inf if timeout is None else timeout * 0.8)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.alive

    def wake(self) -> None:
        """Start the next pass now (a commit just published messages)."""
        if self.processor is not None:
            self.processor.wake()

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here; its processor's Condition
        # may have been held by that thread at the fork.
        self._thread = None
        self.processor = None
        if self._wanted:
            self.start()


_INSTANCES: weakref.WeakSet[ProcessorThread] = weakref.WeakSet()
_REGISTRY: dict[str, ProcessorThread] = {}
_REGISTRY_LOCK = threading.Lock()


def ensure_processor(
    queue: Queue, settings: MailSettings, notify: Notify | None = None
) -> ProcessorThread:
    """The running processor thread for ``queue`` in this process.

    Starts one if none runs (at most one per queue, by its ``name``: the
    directory's path, the outbox's URL; a second application on the same
    queue shares the first one's settings and notifier). Called when the
    application is created.
    """
    with _REGISTRY_LOCK:
        thread = _REGISTRY.get(queue.name)
        if thread is None:
            thread = ProcessorThread(queue, settings, notify=notify)
            _REGISTRY[queue.name] = thread
        thread.start()
        return thread


def _stop_all(timeout: float = STOP_TIMEOUT) -> None:
    """At interpreter exit: let each processor finish its current message."""
    for thread in list(_INSTANCES):
        thread.stop(timeout)


def _restart_after_fork() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for thread in list(_INSTANCES):
        thread._after_fork_in_child()


_hooks_installed = False
_hooks_lock = threading.Lock()


def _install_hooks() -> None:
    """Stop processors at exit, restart them in forked children.

    Registered when the first processor thread starts, never at import.
    The queue's own hook goes first: a restarted processor's new locks must
    not be among the inherited descriptors it closes. Both run after
    threading's own fork handler (registered on its import), so the
    parent's threads are already marked as gone.
    """
    global _hooks_installed
    if _hooks_installed:  # also in a forked child, where the lock may be stale
        return
    with _hooks_lock:
        if not _hooks_installed:  # pragma: no branch (else: another thread won)
            install_fork_hook()
            atexit.register(_stop_all)
            os.register_at_fork(after_in_child=_restart_after_fork)
            _hooks_installed = True
