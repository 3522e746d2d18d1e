"""Messages: what a view hands to ``send()``, checked and made ready to send.

``prepare()`` is the one gate every message passes through: it validates,
builds a stdlib :class:`email.message.EmailMessage`, and serializes it once
to the exact bytes that go on the wire (CRLF line endings, no Bcc header).
"""

from __future__ import annotations

from dataclasses import dataclass


class MailError(ValueError):
    """A message that cannot be sent as given.

    Raised by ``send()`` before anything is queued. ``field`` names the part
    of the message at fault (``'recipients'``, ``'sender'``, a header name)
    and ``value`` the offending value.
    """

    def __init__(self, msg: str, *, field: str | None = None, value: object = None):
        super().__init__(msg)
        self.field = field
        self.value = value


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: ``MAIL FROM`` and ``RCPT TO`` addr-specs."""

    sender: str
    recipients: tuple[str, ...]

    @property
    def smtputf8(self) -> bool:
        """True when an address needs the SMTPUTF8 extension."""
        return not all(a.isascii() for a in (self.sender, *self.recipients))


@dataclass(frozen=True, slots=True)
class PreparedMail:
    """A validated message, serialized once, as it travels to a delivery."""

    message_id: str
    envelope: Envelope
    data: bytes
    original: object = None
