"""Processor processes for the shared outbox's tests (spawned children).

Each takes only picklable arguments and is bounded by its own deadline.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Longest a child processor keeps going on its own (seconds).
CHILD_DEADLINE = 120.0
#: What every child imports: once, in the fork server, not once per child.
PRELOAD = [
    'tests.outboxkit',
    'pyramid_txmail.processor',
    'pyramid_txmail.queue.outbox',
]


@contextmanager
def forkserver() -> Iterator[multiprocessing.context.BaseContext]:
    """A multiprocessing context whose children fork from a fresh,
    single-threaded server that imported :data:`PRELOAD` once (spawning
    each child costs a second of imports on a loaded machine); the server
    is stopped at the end."""
    ctx = multiprocessing.get_context('forkserver')
    ctx.set_forkserver_preload(PRELOAD)
    try:
        yield ctx
    finally:
        # No public way to stop it; it would end with the test run anyway.
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


def drain(url: str, host: str, port: int, stale_after: float, barrier, out: str):
    """Run processor passes over the outbox at ``url`` until a pass finds
    nothing due twice in a row (or the deadline); write how many it sent."""
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue.outbox import OutboxQueue
    from pyramid_txmail.settings import MailSettings

    settings = MailSettings(host=host, port=port, timeout=10.0, queue_batch=100)
    queue = OutboxQueue(url)
    processor = QueueProcessor(queue, settings, stale_after=stale_after)
    if barrier is not None:
        barrier.wait(30)
    sent = 0
    idle = 0
    deadline = time.monotonic() + CHILD_DEADLINE
    while idle < 2 and time.monotonic() < deadline:
        result = processor.run_once()
        sent += result.sent
        idle = idle + 1 if result.sent == 0 else 0
        if result.sent == 0:
            time.sleep(0.1)
    queue.close()
    with open(out, 'w') as f:
        f.write(str(sent))


def drain_forever(url: str, host: str, port: int, stale_after: float) -> None:
    """A processor that keeps passing until killed (or the deadline)."""
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue.outbox import OutboxQueue
    from pyramid_txmail.settings import MailSettings

    settings = MailSettings(host=host, port=port, timeout=10.0, queue_batch=1000)
    processor = QueueProcessor(OutboxQueue(url), settings, stale_after=stale_after)
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        processor.run_once()
        time.sleep(0.05)
