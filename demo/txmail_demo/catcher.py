"""A local SMTP server that catches every message into a folder of .eml files.

The demo's stand-in for a real relay, so nothing needs a mail server:
``python -m txmail_demo.catcher PORT FOLDER``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any

from aiosmtpd.controller import Controller


class CatchAll:
    """aiosmtpd handler: store each message, accept every recipient."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f'{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml'
        tmp = os.path.join(self.folder, '.' + name)
        with open(tmp, 'wb') as f:
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(self.folder, name))  # readers see whole files
        return '250 2.0.0 caught'


def start(port: int, folder: str) -> Controller:
    """Start catching on 127.0.0.1:``port``; call ``.stop()`` on the result."""
    controller = Controller(CatchAll(folder), hostname='127.0.0.1', port=port)
    controller.start()
    return controller


if __name__ == '__main__':  # pragma: no cover - run by hand
    catcher = start(int(sys.argv[1]), sys.argv[2])
    try:
        threading.Event().wait()
    finally:
        catcher.stop()
