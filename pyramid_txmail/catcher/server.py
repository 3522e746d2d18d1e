"""The catcher's process: the SMTP server and the web UI, started and
stopped together."""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from ..settings import is_loopback
from .smtp import CatchHandler, SMTPController
from .store import MailStore
from .web import make_app

DEFAULT_SMTP_PORT = 8025
DEFAULT_HTTP_PORT = 8026


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An Event that SIGINT or SIGTERM sets, for the block's duration (in
    the main thread). Installed before anything says how to stop, so that
    a signal sent at once is never the default one that kills."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class CatcherError(Exception):
    """The catcher cannot start: a port in use, a host not allowed, ..."""


def _bind(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound to ``host:port``, or CatcherError naming the port and
    the option that chose it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        raise CatcherError(f'cannot listen on {host}: {exc.strerror}') from None
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting right after a stop must work; a port someone listens
        # on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CatcherError(
                f'port {port} on {host} is already in use ({flag} {port}); '
                f'choose another, or {flag} 0 for any free port'
            ) from None
        raise CatcherError(
            f'cannot listen on {host} port {port} ({flag}): {exc.strerror}'
        ) from None
    return sock


class Catcher:
    """The SMTP server and its web UI, in threads of this process.

    ``folder`` keeps the messages (a temporary folder, removed at
    :meth:`stop`, when None). Port 0 picks a free port: read
    :attr:`smtp_port` and :attr:`http_port` after :meth:`start`. Recipients
    matching a ``defer`` pattern get 451, a ``reject`` pattern 550. A host
    that is not loopback is refused unless ``allow_remote``: everyone who
    can reach the UI reads every message.
    """

    def __init__(
        self,
        folder: str | None = None,
        *,
        host: str = '127.0.0.1',
        smtp_port: int = DEFAULT_SMTP_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        defer: Sequence[str] = (),
        reject: Sequence[str] = (),
        allow_remote: bool = False,
        previews: str | None = None,
    ):
        if not allow_remote and not is_loopback(host):
            raise CatcherError(
                f'{host} is not a loopback address, and everyone who can '
                'reach the catcher reads every message; pass --allow-remote '
                '(allow_remote=True) to listen there anyway'
            )
        self.host = host
        self.smtp_port = smtp_port
        self.http_port = http_port
        self.defer = tuple(defer)
        self.reject = tuple(reject)
        self.allow_remote = allow_remote
        self.previews = previews
        self._temporary = folder is None
        self.folder = folder or tempfile.mkdtemp(prefix='pyramid-txmail-catch-')
        self.store = MailStore(self.folder)
        self._smtp: SMTPController | None = None
        self._http: Any = None
        self._http_map: dict[int, Any] = {}
        self._http_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The web UI's address."""
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.http_port}/'

    def start(self) -> Catcher:
        """Bind both ports (or raise :class:`CatcherError`), then serve."""
        try:
            smtp_sock = _bind(self.host, self.smtp_port, '--smtp-port')
            try:
                http_sock = _bind(self.host, self.http_port, '--http-port')
            except CatcherError:
                smtp_sock.close()
                raise
        except CatcherError:
            self.stop()  # nothing is left behind, a temporary folder neither
            raise
        self.smtp_port = smtp_sock.getsockname()[1]
        self.http_port = http_sock.getsockname()[1]
        handler = CatchHandler(self.store, self.defer, self.reject)
        # A fixed name: aiosmtpd would otherwise look up the FQDN per session.
        self._smtp = SMTPController(handler, smtp_sock, server_hostname='catcher')
        self._smtp.start()
        app = make_app(
            self.store, check_host=not self.allow_remote, previews=self.previews
        )
        self._http = create_server(
            app,
            map=self._http_map,
            sockets=[http_sock],
            threads=4,
            ident='pyramid-txmail catch',
        )
        self._http_thread = threading.Thread(
            target=self._http.run, name='pyramid_txmail-catcher-http', daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop both servers; remove the folder if it was a temporary one."""
        if self._http is not None:
            # Requests being served finish; then waitress's loop, which runs
            # while its map holds a channel, closes them all in its own
            # thread (listener, connections, trigger) and ends.
            self._http.task_dispatcher.shutdown(timeout=5)
            self._http.trigger.pull_trigger(lambda: wasyncore.close_all(self._http_map))
            self._http_thread.join(10)  # type: ignore[union-attr]
            self._http = None
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp.sock.close()
            self._smtp = None
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Catcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
