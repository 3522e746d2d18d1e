"""Helpers that run in other processes: claim races, real faults, kill -9.

The functions here are imported by child processes (``multiprocessing``
with the spawn start method, or ``python -m tests.crashkit``), so they
take only picklable arguments and report through pipes, files or stdout.
Every loop in them is bounded: a child never outlives its test by more than
its own deadline.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

from tests import make_mail

#: Longest any child keeps going on its own (seconds).
CHILD_DEADLINE = 30.0


def fill(queue, count: int, start: int = 0, recipients=('to@example.com',)):
    """Stage and publish ``count`` small messages; return their queue ids."""
    ids = [queue.stage(make_mail(n, recipients)) for n in range(start, start + count)]
    queue.sync_staged()
    queue.publish(ids)
    return ids


def claim_everything(path: str, barrier, out: str) -> None:
    """Claim (and remove) every message in the queue; write the ids to ``out``.

    Started in several processes at once; ``barrier`` lines them up so that
    they really compete for the same files.
    """
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    barrier.wait(CHILD_DEADLINE)
    claimed = []
    for mail_id in queue.pending():
        claim = queue.claim(mail_id)
        if claim is not None:
            claimed.append(claim.id)
            claim.done()
    with open(out, 'w') as f:
        f.write('\n'.join(claimed))


def stage_over_file_size_limit(path: str, limit: int, size: int, conn) -> None:
    """Stage a ``size``-byte message with RLIMIT_FSIZE at ``limit`` bytes.

    The kernel then refuses the write with a real EFBIG (SIGXFSZ, which
    would kill us, is ignored). Sends back the error text and what is left in
    ``tmp/``.
    """
    from pyramid_txmail.message import PreparedMail
    from pyramid_txmail.queue import MailQueue, QueueError

    queue = MailQueue(path)  # directories first: they are not files
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    small = make_mail(1)
    mail = PreparedMail(small.message_id, small.envelope, b'x' * size)
    try:
        queue.stage(mail)
    except QueueError as exc:
        conn.send((str(exc), os.listdir(os.path.join(path, 'tmp'))))
    else:  # pragma: no cover - the test fails on this
        conn.send((None, os.listdir(os.path.join(path, 'tmp'))))
    conn.close()


def hold_claim(path: str, conn) -> None:
    """Claim the first queued message, report its id, then wait to be killed."""
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    claim = queue.claim(queue.pending()[0])
    conn.send(claim.id)
    time.sleep(CHILD_DEADLINE)
    claim.release()  # pragma: no cover - killed long before


def _main(argv: list[str]) -> int:  # pragma: no cover - runs in children
    command, *args = argv
    raise SystemExit(f'unknown command {command!r} {args}')


if __name__ == '__main__':  # pragma: no cover
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(_main(sys.argv[1:]))
