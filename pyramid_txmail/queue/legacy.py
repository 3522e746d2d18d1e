"""repoze.sendmail queue files left at ``mail.queue_path``: shown and adopted.

pyramid_mailer's ``send_to_queue`` (through repoze.sendmail) writes a
Maildir: each committed message is a file in ``new/`` (``cur/`` is read
too), an RFC 822 message whose ``X-Actually-From`` and ``X-Actually-To``
headers give the envelope. A message repoze.sendmail's processor gave up
on stays as ``.rejected-NAME``; one it is sending has a ``.sending-NAME``
hard link beside it. Our own files in the same directories have names of
another form, which is how the two are told apart.

:func:`scan` lists these files without changing anything (``status``,
``list``). :func:`adopt`, called by the processor at the start of each
pass, turns each into a message of our queue, so that it is sent with our
semantics (retry and backoff, the failed area, events), without the
X-Actually-* headers:

1. with the legacy file ``flock``'ed (as every mover of a queue file does),
   its copy in our format is written and fsync'ed, then renamed to
   ``new/.txmail-adopting-<hash of the legacy name>``: a name no reader
   lists, and one per legacy file, so a second try replaces it;
2. the legacy file is removed;
3. the copy is renamed to ``new/<id>`` (``failed/<id>`` for a rejected or
   unreadable file), where processors see it.

A crash before 2 leaves the legacy file, adopted again later; after 2, the
copy, which the next pass publishes (step 3) because its legacy file is
gone. Neither can be sent twice: a copy is published only once its legacy
file no longer exists, and a rename happens once. A file that cannot be
parsed is adopted into the failed area with the reason, and an entry that
cannot be read at all (a directory, a link, no permission) is logged and
shown by ``status`` and ``list``: nothing is left there silently.
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import email.policy
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING

from ..exceptions import MailError, QueueError
from ..message import Envelope, _addr_spec, parse_address
from .base import Entry
from .locks import _held, _unlock
from .stored import ID, Stored

if TYPE_CHECKING:  # the queue calls this module, never the other way round
    from .maildir import MailQueue

__all__ = ['adopt', 'scan']

log = logging.getLogger('pyramid_txmail.queue')

#: repoze.sendmail's processor link to a file it is sending, and the age
#: after which it takes such a link for a dead processor's (its MAX_SEND_TIME).
SENDING = '.sending-'
SENDING_MAX_AGE = 3 * 3600.0
#: What repoze.sendmail keeps of a message refused for good.
REJECTED = '.rejected-'
#: Our copy of a legacy file between its adoption's steps 1 and 3.
STAGED = '.txmail-adopting-'
REJECTED_ERROR = 'rejected for good by repoze.sendmail before pyramid_txmail'
_SUBS = ('new', 'cur')
_LINE_ENDS = re.compile(rb'\r\n|\r|\n')
_HEADERS_END = re.compile(rb'\r?\n\r?\n')
_ENVELOPE_HEADERS = (b'x-actually-from', b'x-actually-to')

# Entries already logged as unreadable, so that a pass every few seconds
# does not repeat it.
_REPORTED: set[str] = set()


def parse(raw: bytes) -> tuple[Envelope, str, bytes]:
    """Envelope, Message-ID and the bytes to send of a repoze.sendmail file.

    The bytes are the file's, without the X-Actually-* headers and with
    CRLF line ends (what our queue stores). Raises ``ValueError`` saying
    what is wrong.
    """
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    sender = _addresses(headers, 'X-Actually-From')
    recipients = _addresses(headers, 'X-Actually-To')
    if len(sender) != 1:
        raise ValueError(f'X-Actually-From names {len(sender)} addresses, not one')
    found = _HEADERS_END.search(raw)
    head, body = (raw[: found.end()], raw[found.end() :]) if found else (raw, b'')
    kept = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] not in (b' ', b'\t'):  # else it continues the field above
            name = line.split(b':', 1)[0].strip().lower()
            dropping = name in _ENVELOPE_HEADERS
        if not dropping:
            kept.append(line)
    data = _LINE_ENDS.sub(b'\r\n', b''.join(kept) + body)
    message_id = str(headers.get('Message-Id') or '').strip()
    return Envelope(sender[0], tuple(dict.fromkeys(recipients))), message_id, data


def _addresses(headers: email.message.Message, name: str) -> list[str]:
    value = headers.get(name)
    if value is None:
        raise ValueError(f'no {name} header: not written by repoze.sendmail')
    try:
        # repoze.sendmail writes it RFC 2047-encoded (utf-8), maybe folded.
        text = str(email.header.make_header(email.header.decode_header(value)))
        # Each address as the application gave it to pyramid_mailer, through
        # new mail's checks: nothing a lenient parser would drop or join.
        found = [_addr_spec(parse_address(item, name)) for item in _split(text)]
    except MailError as exc:  # names the header already
        raise ValueError(str(exc)) from None
    except (LookupError, UnicodeError, email.errors.HeaderParseError) as exc:
        raise ValueError(f'{name}: {exc}') from None
    if not found:
        raise ValueError(f'{name} names no address')
    return found


def _split(text: str) -> list[str]:
    """The items of the address list ``text``: split at the commas outside
    quoted strings, angle brackets and comments, in linear time (the
    stdlib's strict list parser takes half a minute for 20,000 addresses)."""
    items, start, quoted, depth, escaped = [], 0, False, 0, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == '\\':
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in '<(':
            depth += 1
        elif char in '>)':
            depth -= 1
        elif char == ',' and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    # repoze.sendmail's join of an empty list, or a trailing comma, names no one.
    return [item.strip() for item in items if item.strip()]


def _names(path: str, sub: str) -> list[str]:
    """Every name in ``sub`` of the queue directory ``path``, sorted."""
    where = os.path.join(path, sub)
    try:
        with os.scandir(where) as entries:
            return sorted(e.name for e in entries)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise QueueError(f'cannot read mail queue {where}: {exc}') from exc


def _legacy_names(names: list[str]) -> list[str]:
    """Those of ``names`` that are repoze.sendmail's messages (rejected too)."""
    # Maildir readers skip dot-names: repoze's own links and our staged
    # copies among them. Our messages have names of the _ID form.
    return [
        n
        for n in names
        if (not n.startswith('.') or n.startswith(REJECTED)) and not ID.fullmatch(n)
    ]


def _open(queue: MailQueue, path: str) -> int:
    """Open a queue entry for reading; OSError if it is no regular file."""
    # O_NONBLOCK: a FIFO must not hang the processor; O_NOFOLLOW: a link
    # could point anywhere.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = _held(queue._opener, path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, 'not a regular file')
    except BaseException:
        _unlock(fd)
        raise
    return fd


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b''.join(chunks)


def _cause(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return 'a symbolic link, not a file'
    return exc.strerror or str(exc)


# -- inspection (read-only)


def scan(queue: MailQueue, *, failed: bool | None = False) -> list[Entry]:
    """Legacy files in ``queue``'s directory, as ``list`` shows them.

    The waiting ones (state ``legacy``; an unreadable one says why in
    ``last_error``), or with ``failed=True`` those repoze.sendmail had
    rejected (state ``failed``), or with ``failed=None`` both. ``id`` is the
    file's path in the queue directory. Changes nothing.
    """
    infos = []
    now = queue.clock()
    for sub in _SUBS:
        for name in _legacy_names(_names(queue.path, sub)):
            rejected = name.startswith(REJECTED)
            if failed is not None and rejected != failed:
                continue
            infos.append(_info(queue, f'{sub}/{name}', rejected, now))
    return [i for i in infos if i is not None]


def _info(queue: MailQueue, where: str, rejected: bool, now: float) -> Entry | None:
    try:
        fd = _open(queue, os.path.join(queue.path, where))
    except FileNotFoundError:
        return None  # adopted since the listing
    except OSError as exc:
        return Entry(where, 'legacy', 0.0, 0, (), f'unreadable: {_cause(exc)}')
    try:
        age = now - os.fstat(fd).st_mtime
        raw = _read(fd)
    finally:
        _unlock(fd)
    try:
        envelope, _, _ = parse(raw)
    except ValueError as exc:
        return Entry(where, 'legacy', age, 0, (), f'unreadable: {exc}')
    if rejected:
        return Entry(where, 'failed', age, 0, envelope.recipients, REJECTED_ERROR)
    return Entry(where, 'legacy', age, 0, envelope.recipients, None)


# -- adoption (the processor)


def adopt(queue: MailQueue) -> int:
    """Move every legacy file into ``queue``; return how many.

    Called at the start of each processor pass. Safe with any number of
    processors at once, and at any crash point (see the module docstring).
    Errors are logged per file; the pass goes on.
    """
    adopted = 0
    listing = {sub: _names(queue.path, sub) for sub in _SUBS}
    for sub in _SUBS:
        for name in _legacy_names(listing[sub]):
            try:
                adopted += _adopt(queue, sub, name)
            except (OSError, QueueError) as exc:
                log.error('cannot adopt %s/%s from repoze.sendmail: %s', sub, name, exc)
    # Copies staged before this pass whose adoption stopped half-way.
    for name in [n for n in listing['new'] if n.startswith(STAGED)]:
        try:
            adopted += _publish_orphan(queue, name)
        except (OSError, QueueError, ValueError) as exc:
            log.error('cannot publish new/%s: %s', name, exc)
    return adopted


def _adopt(queue: MailQueue, sub: str, name: str) -> int:
    where = f'{sub}/{name}'
    path = queue._p(sub, name)
    rejected = name.startswith(REJECTED)
    if not rejected and _repoze_is_sending(queue, sub, name):
        return 0
    try:
        fd = _open(queue, path)
    except FileNotFoundError:
        return 0  # another processor adopted it
    except OSError as exc:
        if where not in _REPORTED:
            _REPORTED.add(where)
            log.error(
                'cannot read %s in mail queue %s: %s; move or delete it',
                where,
                queue.path,
                _cause(exc),
            )
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            now_at = os.stat(path, follow_symlinks=False)
        except (BlockingIOError, FileNotFoundError):
            return 0  # another processor is adopting it, or has
        if (st.st_dev, st.st_ino) != (now_at.st_dev, now_at.st_ino):
            return 0
        stored, data = _stored(queue, where, _read(fd), st.st_mtime, rejected)
        staged = _stage(queue, stored, data)  # 1.
        if not rejected and _repoze_is_sending(queue, sub, name):
            # Its processor started on it meanwhile (it takes no lock): the
            # message is its own; ours would be a duplicate.
            os.unlink(staged)
            return 0
        # 2. the original goes: from now on the copy is the message
        os.unlink(path)
        queue._sync_dir(sub, raising=True)
    finally:
        _unlock(fd)
    _publish(queue, staged, stored.id, where, stored.last_error)  # 3.
    return 1


def _stage(queue: MailQueue, stored: Stored, data: bytes) -> str:
    """Step 1: write the copy, then give it the one name its legacy file
    (``stored.legacy``) maps to."""
    where = str(stored.legacy)
    staged = queue._p('new', STAGED + hashlib.sha256(where.encode()).hexdigest()[:32])
    tmp = queue._p('tmp', f'{stored.id}.adopting')
    out = queue._create(tmp)
    try:
        queue._write_all(out, tmp, stored, data)
    finally:
        os.close(out)
    queue._rename(tmp, staged)
    queue._sync_dir('new', raising=True)
    return staged


def _repoze_is_sending(queue: MailQueue, sub: str, name: str) -> bool:
    """True while a repoze.sendmail processor sends this file (its link)."""
    try:
        st = os.stat(queue._p(sub, SENDING + name), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return queue.clock() - st.st_mtime < SENDING_MAX_AGE


def _stored(
    queue: MailQueue, where: str, raw: bytes, mtime: float, rejected: bool
) -> tuple[Stored, bytes]:
    """Our metadata for a legacy file, and the bytes to keep."""
    now = queue.clock()
    # Ordered by the time repoze.sendmail queued it: before newer mail.
    mail_id = f'{int(mtime * 1_000_000):016d}.{os.getpid()}.{secrets.token_hex(8)}'
    try:
        envelope, message_id, data = parse(raw)
        error = REJECTED_ERROR if rejected else None
    except ValueError as exc:
        envelope, message_id, data = Envelope('', ()), '', raw
        error = f'unreadable repoze.sendmail queue file {where}: {exc}'
        log.error(
            'mail queue %s: %s; kept in failed/ as %s', queue.path, error, mail_id
        )
    stored = Stored(
        id=mail_id,
        message_id=message_id,
        sender=envelope.sender,
        recipients=envelope.recipients,
        # A fresh start for mail.max_age: no attempt was made before.
        queued_at=now,
        last_error=error,
        legacy=where,
    )
    return stored, data


def _publish(
    queue: MailQueue, staged: str, mail_id: str, where: str, error: str | None
) -> None:
    """Step 3: the copy of ``where`` becomes message ``mail_id``, queued,
    or failed with ``error``."""
    dest = 'new' if error is None else 'failed'
    try:
        queue._rename(staged, queue._p(dest, mail_id))
    except FileNotFoundError:
        return  # another processor published it
    queue._sync_dir(dest, raising=True)
    if error is not None:
        # Kept beside it, so that the listing shows why even where the copy
        # has no envelope to show (a file that could not be parsed).
        queue._note(mail_id, error)
    log.info('adopted %s from repoze.sendmail as %s/%s', where, dest, mail_id)


def _publish_orphan(queue: MailQueue, name: str) -> int:
    """Step 3 for a copy whose adoption stopped after step 1 or 2."""
    staged = queue._p('new', name)
    try:
        fd = _open(queue, staged)
    except FileNotFoundError:
        return 0  # published meanwhile
    try:
        meta = json.loads(_read(fd).partition(b'\n')[0])
    finally:
        _unlock(fd)
    # Not Stored.decode: the copy of a file that could not be parsed has
    # no envelope, which a message to send must have.
    if not (
        isinstance(meta, dict)
        and all(isinstance(meta.get(k), str) for k in ('id', 'legacy'))
        and isinstance(meta.get('last_error'), (str, type(None)))
    ):
        raise ValueError('not a copy staged by pyramid_txmail')
    if os.path.lexists(os.path.join(queue.path, meta['legacy'])):
        # Stopped before step 2: the file is adopted again, replacing this.
        return 0
    _publish(queue, staged, meta['id'], meta['legacy'], meta.get('last_error'))
    return 1
