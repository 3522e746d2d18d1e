"""The queue directory's file format: a message file's metadata line.

A message file is one JSON line of metadata, then the message bytes
exactly as sent (see ``docs/internals.rst``, "The queue directory").
:class:`Stored` is that line as a frozen value; an outcome writes a new
version made with :func:`dataclasses.replace`. Both the queue
(:mod:`.maildir`) and the adoption of repoze.sendmail files (:mod:`.legacy`)
write it, which is why it lives below both.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ['FORMAT_VERSION', 'ID', 'Stored']

FORMAT_VERSION = 1

#: A message file's name: <µs, 16 digits>.<pid>.<random hex>. Anything else
#: in a directory is ignored, so a stray file (an editor's backup, a
#: rewrite in tmp/) is never a message.
ID = re.compile(r'\d{16}\.\d+\.[0-9a-f]+')


@dataclass(frozen=True, slots=True)
class Stored:
    """The metadata line of a message file (format version 1).

    ``subject`` is the decoded Subject, kept so that a listing need not
    parse the message (``None``: none, or a file written before it was
    kept: the headers then tell). ``legacy`` names the repoze.sendmail file
    an adopted message came from. ``id`` is the file's name when it was
    written (files written by hand may lack it).
    """

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    queued_at: float
    attempts: int = 0
    last_error: str | None = None
    id: str = ''
    subject: str | None = None
    legacy: str | None = None

    def encode(self) -> bytes:
        """The line as written, without its newline: compact JSON, ASCII,
        keys in the order of format version 1."""
        record: dict[str, Any] = {
            'v': FORMAT_VERSION,
            'id': self.id,
            'message_id': self.message_id,
            'sender': self.sender,
            'recipients': list(self.recipients),
            'queued_at': self.queued_at,
            'attempts': self.attempts,
            'last_error': self.last_error,
        }
        if self.subject is not None:
            record['subject'] = self.subject
        if self.legacy is not None:
            record['legacy'] = self.legacy
        return json.dumps(record, ensure_ascii=True, separators=(',', ':')).encode(
            'ascii'
        )

    @classmethod
    def decode(cls, line: bytes) -> Stored:
        """The metadata ``line``, checked; ``ValueError`` if it is not ours.

        Every field the processor and the listing use is checked for its
        type here, so that a damaged or hand-edited entry fails here (and
        is set aside) rather than halfway through an SMTP session. Keys
        this version does not know (``smtputf8``, written by 0.x and never
        read) are ignored.
        """
        try:
            meta = json.loads(line)
        except RecursionError:
            raise ValueError('metadata nested too deeply') from None
        if not isinstance(meta, dict) or meta.get('v') != FORMAT_VERSION:
            raise ValueError(f'not a version {FORMAT_VERSION} queue file')
        last_error = meta.get('last_error')
        recipients = meta.get('recipients')
        number = meta.get('queued_at')
        attempts = meta.get('attempts')
        for key, ok in (
            ('message_id', isinstance(meta.get('message_id'), str)),
            ('sender', isinstance(meta.get('sender'), str)),
            (
                'recipients',
                isinstance(recipients, list)
                and bool(recipients)
                and all(isinstance(r, str) for r in recipients),
            ),
            (
                'queued_at',
                isinstance(number, (int, float))
                and not isinstance(number, bool)
                and math.isfinite(number),
            ),
            (
                'attempts',
                isinstance(attempts, int)
                and not isinstance(attempts, bool)
                and attempts >= 0,
            ),
            ('last_error', isinstance(last_error, (str, type(None)))),
            ('subject', isinstance(meta.get('subject', ''), str)),
        ):
            if not ok:
                raise ValueError(f'bad or missing {key!r}')
        mail_id = meta.get('id')
        legacy = meta.get('legacy')
        return cls(
            message_id=meta['message_id'],
            sender=meta['sender'],
            recipients=tuple(recipients),  # type: ignore[arg-type]  # checked above
            queued_at=number,  # type: ignore[arg-type]  # checked above
            attempts=attempts,  # type: ignore[arg-type]  # checked above
            last_error=last_error,
            id=mail_id if isinstance(mail_id, str) else '',
            subject=meta.get('subject'),
            legacy=legacy if isinstance(legacy, str) else None,
        )
