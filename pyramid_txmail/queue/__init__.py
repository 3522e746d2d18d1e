"""The mail queue: the protocol the processor and the command line use
(:mod:`.base`), and the queue directory that implements it (:mod:`.maildir`,
with its lock lifetimes in :mod:`.locks`, its file format in :mod:`.stored`
and repoze.sendmail's files in :mod:`.legacy`).

The names that were importable from ``pyramid_txmail.queue`` when it was
one module still are.
"""

from __future__ import annotations

from ..exceptions import QueueError, UnknownMessage
from .base import Entry, Fault, Queue, QueuePass
from .locks import install_fork_hook
from .maildir import (
    ALL_STATES,
    FAULT_FILE,
    HOLD,
    STATES,
    TMP_MAX_AGE,
    Claim,
    Info,
    MaildirPass,
    MailQueue,
)
from .stored import FORMAT_VERSION

__all__ = [
    'ALL_STATES',
    'FAULT_FILE',
    'FORMAT_VERSION',
    'HOLD',
    'STATES',
    'TMP_MAX_AGE',
    'Claim',
    'Entry',
    'Fault',
    'Info',
    'MailQueue',
    'MaildirPass',
    'Queue',
    'QueueError',
    'QueuePass',
    'UnknownMessage',
    'install_fork_hook',
]
