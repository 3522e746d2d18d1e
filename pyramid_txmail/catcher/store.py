"""The catcher's folder of messages: one ``ID.eml`` (the bytes as received)
and one ``ID.json`` (the envelope) per message.

Files are written under a hidden name and renamed, envelope first, so a
reader never sees half a message; the folder can be read and cleaned by
hand or by other tools while the catcher runs.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage, MIMEPart
from typing import Any

# time_ns then random hex: names sort by arrival, and nothing a client sends
# ever becomes part of a path.
_ID = re.compile(r'\A[0-9]{20}-[0-9a-f]{8}\Z')


@dataclass(frozen=True)
class Part:
    """An attachment: its position among the message's attachments, the
    file name it claims (never used as a path), type and decoded size."""

    index: int
    filename: str
    content_type: str
    size: int
    data: bytes = field(repr=False)


def _header(msg: EmailMessage, name: str) -> str:
    """The values of header ``name``, decoded, or as received where the
    email package fails on them (it raises on some malformed addresses)."""
    try:
        return ', '.join(str(v) for v in msg.get_all(name, []))
    except Exception:
        return ', '.join(str(v) for k, v in msg.raw_items() if k.lower() == name)


def _content(part: MIMEPart | None) -> str:
    if part is None:
        return ''
    try:
        return str(part.get_content())
    except Exception:  # an unknown charset: show what can be shown
        payload = part.get_payload(decode=True)
        return payload.decode('utf-8', 'replace') if isinstance(payload, bytes) else ''


def _bytes(payload: object) -> bytes:
    # get_payload(decode=True) is bytes for a non-multipart part, else None.
    return payload if isinstance(payload, bytes) else b''


class CaughtMessage:
    """One caught message, parsed once."""

    def __init__(self, mail_id: str, envelope: dict[str, Any], raw: bytes):
        self.id = mail_id
        self.raw = raw
        self.mail_from: str = envelope.get('mail_from', '')
        self.rcpt_tos: list[str] = list(envelope.get('rcpt_tos', []))
        self.received = datetime.fromtimestamp(
            int(mail_id.split('-')[0]) / 1e9, tz=timezone.utc
        )
        msg = email.message_from_bytes(
            raw.replace(b'\r\n', b'\n'), policy=email.policy.default
        )
        self.message = msg
        self.subject = _header(msg, 'subject')
        self.sender = _header(msg, 'from')
        self.to = _header(msg, 'to')
        self.text = _content(msg.get_body(('plain',)))
        html = msg.get_body(('html',))
        self.html = _content(html) if html is not None else None
        self.attachments = [
            Part(
                index=i,
                filename=part.get_filename() or f'attachment-{i + 1}',
                content_type=part.get_content_type(),
                size=len(data),
                data=data,
            )
            for i, part in enumerate(msg.iter_attachments())
            for data in [_bytes(part.get_payload(decode=True))]
        ]

    def headers(self) -> list[tuple[str, str]]:
        """Every header, in order, decoded where it can be."""
        items = []
        for name, value in self.message.raw_items():
            try:
                shown = str(self.message.policy.header_fetch_parse(name, value))
            except Exception:
                shown = str(value)
            items.append((name, shown))
        return items

    def matches(self, query: str) -> bool:
        """Whether every word of ``query`` is in the subject, the addresses
        (headers or envelope) or the text, ignoring case."""
        haystack = '\n'.join(
            [
                self.subject,
                self.sender,
                self.to,
                self.mail_from,
                self.text,
                *self.rcpt_tos,
            ]
        ).casefold()
        return all(word in haystack for word in query.casefold().split())

    def summary(self) -> dict[str, Any]:
        """What the list shows (and the JSON API returns for each message)."""
        return {
            'id': self.id,
            'received': self.received.isoformat(),
            'from': self.sender,
            'to': self.to,
            'subject': self.subject,
            'mail_from': self.mail_from,
            'rcpt_tos': self.rcpt_tos,
            'size': len(self.raw),
            'attachments': len(self.attachments),
        }

    def detail(self) -> dict[str, Any]:
        """Everything about the message, for the JSON API."""
        return {
            **self.summary(),
            'headers': self.headers(),
            'text': self.text,
            'html': self.html,
            'attachments': [
                {
                    'index': p.index,
                    'filename': p.filename,
                    'content_type': p.content_type,
                    'size': p.size,
                }
                for p in self.attachments
            ],
        }


class MailStore:
    """The messages in ``folder`` (created if missing), newest first."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self._lock = threading.Lock()
        self._parsed: dict[str, CaughtMessage] = {}

    def add(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        """Keep one message; returns its id."""
        mail_id = f'{time.time_ns():020d}-{uuid.uuid4().hex[:8]}'
        envelope = json.dumps({'mail_from': mail_from, 'rcpt_tos': rcpt_tos})
        self._write(mail_id + '.json', envelope.encode())
        self._write(mail_id + '.eml', raw)
        return mail_id

    def _write(self, name: str, data: bytes) -> None:
        tmp = os.path.join(self.folder, f'.{name}.tmp')
        with open(tmp, 'wb') as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.folder, name))

    def ids(self) -> list[str]:
        names = os.listdir(self.folder)
        return sorted(
            (n[:-4] for n in names if n.endswith('.eml') and _ID.match(n[:-4])),
            reverse=True,
        )

    def get(self, mail_id: str) -> CaughtMessage | None:
        """The message, or None for an unknown (or malformed) id."""
        if not _ID.match(mail_id):
            return None
        with self._lock:
            cached = self._parsed.get(mail_id)
        if cached is not None:
            return cached
        path = os.path.join(self.folder, mail_id)
        try:
            with open(path + '.eml', 'rb') as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            with open(path + '.json', 'rb') as f:
                envelope = json.loads(f.read())
        except (OSError, ValueError):
            envelope = {}  # written by hand, or its envelope was removed
        message = CaughtMessage(mail_id, envelope, raw)
        with self._lock:
            self._parsed[mail_id] = message
        return message

    def list(self, query: str = '') -> list[CaughtMessage]:
        """The messages matching ``query`` (all for ''), newest first."""
        found = []
        for mail_id in self.ids():
            message = self.get(mail_id)
            if message is not None and message.matches(query):
                found.append(message)
        return found

    def delete(self, mail_id: str) -> bool:
        """Remove one message; False if there was none by that id."""
        if not _ID.match(mail_id):
            return False
        with self._lock:
            self._parsed.pop(mail_id, None)
        path = os.path.join(self.folder, mail_id)
        try:
            os.unlink(path + '.eml')
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + '.json')
        return True

    def clear(self) -> int:
        """Remove every message; returns how many."""
        return sum(self.delete(mail_id) for mail_id in self.ids())
