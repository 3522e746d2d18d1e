"""The catcher's SMTP side: aiosmtpd on a socket bound beforehand."""

from __future__ import annotations

import fnmatch
import logging
import socket
from collections.abc import Sequence
from typing import Any

from aiosmtpd.controller import BaseThreadedController

from .store import MailStore

log = logging.getLogger('pyramid_txmail.catcher')


def matches(address: str, patterns: Sequence[str]) -> bool:
    """Whether ``address`` matches one of the fnmatch ``patterns``, ignoring
    case (the same on every platform, unlike :func:`fnmatch.fnmatch`)."""
    address = address.casefold()
    return any(fnmatch.fnmatchcase(address, p.casefold()) for p in patterns)


class CatchHandler:
    """aiosmtpd handler: keep every message; answer recipients matching a
    ``defer`` pattern with 451 and a ``reject`` pattern with 550 (reject
    wins), so that retries and failures can be watched for real."""

    def __init__(
        self,
        store: MailStore,
        defer: Sequence[str] = (),
        reject: Sequence[str] = (),
    ):
        self.store = store
        self.defer = tuple(defer)
        self.reject = tuple(reject)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if matches(address, self.reject):
            return '550 5.1.1 Recipient rejected (pyramid-txmail catch --reject)'
        if matches(address, self.defer):
            return '451 4.3.0 Try again later (pyramid-txmail catch --defer)'
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return '250 2.1.5 OK'

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail_id = self.store.add(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content
        )
        log.info('caught %s for %s', mail_id, ', '.join(envelope.rcpt_tos))
        return f'250 2.0.0 OK caught as {mail_id}'


class SMTPController(BaseThreadedController):
    """aiosmtpd's threaded controller serving an already bound socket, so
    that a port in use is found (and named) before anything starts."""

    def __init__(self, handler: CatchHandler, sock: socket.socket, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock)

    def _trigger_server(self) -> None:
        # aiosmtpd creates the SMTP object on the first connection; start()
        # waits for it, as its own controllers do.
        host, port = self.sock.getsockname()[:2]
        with socket.create_connection((host, port), timeout=1.0) as probe:
            probe.recv(1024)
