"""A TCP proxy on 127.0.0.1 that forwards, and stops forwarding on command.

:class:`StallingProxy` stands between the code and the test PostgreSQL, as
a network path does. :meth:`~StallingProxy.stall` makes connections stop
forwarding without closing anything: their sockets stay open, nothing is
read from them and nothing is sent, as through a network partition, a
proxy that hangs or a server that no longer answers. The client sees no
error, only silence. Connections made later are forwarded, unless stalled
too (``new=True``) until :meth:`~StallingProxy.resume`.

Threads: one accepting, two per connection; each loop looks at the stop
event every :data:`TICK` seconds, and :meth:`~StallingProxy.stop` joins
them all (bounded).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

#: Seconds each thread waits before looking at the stop event again.
TICK = 0.05


class _Link:
    """One client connection and its connection upstream."""

    def __init__(self, client: socket.socket, server: socket.socket, stalled: bool):
        self.client = client
        self.server = server
        self.stalled = stalled
        #: What the client sent that was held back (stall(on=...)).
        self.held = b''

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class StallingProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` until told to stall."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._listener = socket.create_server(('127.0.0.1', 0))
        self._listener.settimeout(TICK)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._stall_new = False
        self._trigger: tuple[bytes, bool] | None = None
        #: How many connections were accepted.
        self.connections = 0
        self._start(self._accept)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stall(
        self, *, on: bytes | None = None, deliver: bool = False, new: bool = False
    ) -> None:
        """Stop forwarding on every open connection now; with ``on``, on the
        next connection whose client sends those bytes instead (forwarding
        them first if ``deliver``: the server gets the request, its answer
        is lost). ``new``: connections made from now on stall too, until
        :meth:`resume`."""
        with self._lock:
            if on is not None:
                self._trigger = (on, deliver)
            else:
                for link in self._links:
                    link.stalled = True
            self._stall_new = new

    def resume(self, *, forward: bool = False) -> None:
        """Forward again: new connections are forwarded; the stalled ones are
        dropped, unforwarded (the partition outlasted them), or with
        ``forward`` forwarded again, what was held back first (the
        partition healed in time for them)."""
        with self._lock:
            self._stall_new = False
            self._trigger = None
            stalled = [link for link in self._links if link.stalled]
            if not forward:
                self._links = [link for link in self._links if not link.stalled]
        for link in stalled:
            if not forward:
                link.close()
                continue
            with contextlib.suppress(OSError):
                link.server.sendall(link.held)
            link.held = b''
            link.stalled = False

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()
        self._listener.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.upstream, timeout=5)
            with self._lock:
                link = _Link(client, server, stalled=self._stall_new)
                self._links.append(link)
                self.connections += 1
            self._start(self._pump, link, client, server, True)
            self._start(self._pump, link, server, client, False)

    def _pump(
        self, link: _Link, src: socket.socket, dst: socket.socket, upward: bool
    ) -> None:
        try:
            while not self._stop.is_set():
                if link.stalled:
                    self._stop.wait(TICK)
                    continue
                readable, _, _ = select.select([src], [], [], TICK)
                if not readable or link.stalled:
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if upward and self._triggered(link, data):
                    continue
                dst.sendall(data)
        except (OSError, ValueError):
            link.close()  # either side went away, or resume() closed it

    def _triggered(self, link: _Link, data: bytes) -> bool:
        """Stall ``link`` if ``data`` holds the trigger; True if ``data``
        is then held back."""
        with self._lock:
            if self._trigger is None or self._trigger[0] not in data:
                return False
            _, deliver = self._trigger
            self._trigger = None
            link.stalled = True
        if deliver:
            link.server.sendall(data)
        else:
            link.held += data
        return True
