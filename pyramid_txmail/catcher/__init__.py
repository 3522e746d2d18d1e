"""``pyramid-txmail catch``: a development mail catcher.

An SMTP server (aiosmtpd) that keeps every message in a folder, and a web
UI on the same process (Pyramid on waitress) to read them, both on
127.0.0.1 by default. Needs ``pip install 'pyramid_txmail[catcher]'``::

    from pyramid_txmail.catcher import Catcher

    with Catcher(smtp_port=0, http_port=0, defer=['defer@*']) as catcher:
        print(catcher.smtp_port, catcher.url)
"""

from __future__ import annotations

from .server import Catcher, CatcherError, stop_signals
from .store import CaughtMessage, MailStore

__all__ = ['Catcher', 'CatcherError', 'CaughtMessage', 'MailStore', 'stop_signals']
