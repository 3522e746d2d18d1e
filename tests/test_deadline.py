"""The watchdog shared by the SMTP session and the outbox's round trips."""

from __future__ import annotations

import threading
import time

from pyramid_txmail import deadline


def test_threads_asking_at_once_get_the_same_watchdog(monkeypatch):
    class Slow(deadline.Watchdog):
        # Widens the moment between "none yet" and "this one".
        def __init__(self, *args, **kw):
            time.sleep(0.2)
            super().__init__(*args, **kw)

    monkeypatch.setattr(deadline, 'Watchdog', Slow)
    get = deadline.process_watchdog('test-watchdog')
    start = threading.Barrier(2)
    got = []

    def ask():
        start.wait(10)
        got.append(get())

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 2
    assert got[0] is got[1]
    assert get() is got[0]
