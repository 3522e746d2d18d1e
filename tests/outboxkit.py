"""Processor processes for the shared outbox's tests (spawned children).

Each takes only picklable arguments and is bounded by its own deadline.
"""

from __future__ import annotations

import time

#: Longest a child processor keeps going on its own (seconds).
CHILD_DEADLINE = 120.0


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
            time.sleep(0.2)
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
