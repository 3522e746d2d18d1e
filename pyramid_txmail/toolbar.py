"""A pyramid_debugtoolbar panel: the mail a request sent, and its fate.

Enable it in the application's settings, next to pyramid_debugtoolbar::

    pyramid.includes = pyramid_debugtoolbar
    debugtoolbar.extra_panels = pyramid_txmail.toolbar.MailPanel

(or ``debugtoolbar.includes = pyramid_txmail.toolbar``). For each message
the request's transactions carried, the "Mail" tab shows the subject, the
recipients, the size, a preview of the text, and what
happened when the transaction ended: ``sent`` (direct delivery, the relay
accepted it), ``queued`` (in the queue for the processor), ``dropped``
(the transaction was aborted, with why), or ``failed`` (with the error).
Messages sent with ``send_immediately()`` are listed too.

Nothing here changes what is sent: the panel watches the request's
transaction manager (a synchronizer) and the ``MailSent``/``MailFailed``
events of the request's thread.
"""

from __future__ import annotations

import email
import email.policy
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from html import escape
from typing import Any

from pyramid.interfaces import IRoutesMapper
from pyramid_debugtoolbar.panels import DebugPanel

from .events import MailEvent, MailFailed, MailSent
from .interfaces import IMailer, IQueueDelivery
from .previews import PREVIEWS_ROUTE

__all__ = ['MailPanel', 'includeme']

PREVIEW = 2000  # characters of the text part shown

_recording: ContextVar[_Recorder | None] = ContextVar(
    'pyramid_txmail_toolbar', default=None
)
_subscribe_lock = threading.Lock()


@dataclass
class MailRecord:
    """One message as the panel shows it."""

    message_id: str
    subject: str
    recipients: tuple[str, ...]
    size: int
    preview: str
    delivery: str  # 'direct', 'queued', 'immediate', or the class name
    outcome: str = 'pending'
    detail: str = ''


def _parse(data: bytes) -> tuple[str, str]:
    """The subject and the start of the text part of a message's bytes."""
    msg = email.message_from_bytes(
        data.replace(b'\r\n', b'\n'), policy=email.policy.default
    )
    subject = str(msg.get('Subject', ''))
    body = msg.get_body(('plain',))
    try:
        text = str(body.get_content()) if body is not None else ''
    except Exception:  # an unknown charset: the preview is best effort
        text = ''
    return subject, text[:PREVIEW]


def _error(exc: BaseException | None) -> str:
    return f'{type(exc).__name__}: {exc}' if exc is not None else ''


class _Recorder:
    """A transaction synchronizer for one request: when a transaction ends,
    it records the mail the transaction carried, then its outcome."""

    def __init__(self, key: object):
        self.key = key
        self.records: list[MailRecord] = []

    def newTransaction(self, txn: Any) -> None:
        pass

    def afterCompletion(self, txn: Any) -> None:
        pass

    def beforeCompletion(self, txn: Any) -> None:
        try:
            dm = txn.data(self.key)
        except KeyError:
            return
        records = []
        for delivery, mail in dm.mails:
            subject, preview = _parse(mail.data)
            kind = 'queued' if IQueueDelivery.providedBy(delivery) else 'direct'
            records.append(
                MailRecord(
                    mail.message_id,
                    subject,
                    tuple(mail.envelope.recipients),
                    len(mail.data),
                    preview,
                    kind,
                )
            )
        self.records += records
        # Registered after the data manager's own hook, so direct delivery
        # and its events have happened when these run.
        txn.addAfterCommitHook(self._after_commit, (records,))
        txn.addAfterAbortHook(self._after_abort, (records,))

    def _after_commit(self, status: bool, records: list[MailRecord]) -> None:
        # Called inside commit's except clause when the commit failed.
        error = None if status else sys.exc_info()[1]
        for record in records:
            if record.outcome != 'pending':
                continue
            if not status:
                record.outcome = 'dropped'
                record.detail = f'the commit failed: {_error(error)}'
            elif record.delivery == 'queued':
                record.outcome = 'queued'
            else:  # a delivery that notifies nothing
                record.outcome = 'committed'

    def _after_abort(self, records: list[MailRecord]) -> None:
        for record in records:
            if record.outcome == 'pending':
                record.outcome = 'dropped'

    def event(self, event: MailEvent) -> None:
        record = next(
            (
                r
                for r in self.records
                if r.message_id == event.message_id and r.outcome == 'pending'
            ),
            None,
        )
        if record is None:  # send_immediately(): no transaction
            subject, preview = _parse(event.data)
            msg = event.message
            recipients = tuple(
                str(a) for field in ('To', 'Cc') for a in msg.get_all(field, [])
            )
            record = MailRecord(
                event.message_id,
                subject,
                recipients,
                len(event.data),
                preview,
                'immediate',
            )
            self.records.append(record)
        if isinstance(event, MailFailed):
            record.outcome = 'failed'
            record.detail = _error(event.error)
        elif isinstance(event, MailSent):  # pragma: no branch
            record.outcome = 'sent'
            if event.refused:
                record.detail = 'refused: ' + ', '.join(
                    f'{rcpt} ({code} {reply})'
                    for rcpt, (code, reply) in sorted(event.refused.items())
                )


def _on_mail_event(event: MailEvent) -> None:
    recorder = _recording.get()
    if recorder is not None:
        recorder.event(event)


def _subscribe(registry: Any) -> None:
    """Subscribe to the mail events once per application registry."""
    with _subscribe_lock:
        if not any(
            getattr(h, 'handler', None) is _on_mail_event
            for h in registry.registeredHandlers()
        ):
            registry.registerHandler(_on_mail_event, (MailEvent,))


class MailPanel(DebugPanel):  # type: ignore[misc]  # pyramid_debugtoolbar is untyped
    """The "Mail" tab: each message of the request and what became of it."""

    name = 'mail'
    title = 'Mail'
    nav_title = 'Mail'
    has_content = True

    def __init__(self, request: Any):
        mailer = request.registry.queryUtility(IMailer)
        # A transaction keeps its mail under the mailer's key, which every
        # copy bound to a request shares (see Mailer.bind).
        self.recorder = _Recorder(getattr(mailer, '_key', mailer))
        self.data = {'records': self.recorder.records}
        self.previews_url = _previews_url(request)
        _subscribe(request.registry)

    @property
    def nav_subtitle(self) -> str:
        return str(len(self.recorder.records))

    def wrap_handler(self, handler: Any) -> Any:
        def wrapper(request: Any) -> Any:
            manager = request.tm
            manager.registerSynch(self.recorder)
            token = _recording.set(self.recorder)
            error: BaseException | None = None
            try:
                response = handler(request)
                error = getattr(request, 'exception', None)
                return response
            except Exception as exc:
                error = exc
                raise
            finally:
                _recording.reset(token)
                manager.unregisterSynch(self.recorder)
                for record in self.recorder.records:
                    if record.outcome == 'dropped' and not record.detail:
                        record.detail = (
                            f'the transaction was aborted: {_error(error)}'
                            if error is not None
                            else 'the transaction was aborted'
                        )

        return wrapper

    def render_content(self, request: Any) -> str:
        records = self.recorder.records
        link = (
            f'<p><a id="pyramid-txmail-previews" href="{escape(self.previews_url)}" '
            'target="_blank">Mail previews</a></p>'
            if self.previews_url
            else ''
        )
        if not records:
            return link + '<p>This request sent no mail.</p>'
        style = {
            'sent': 'success',
            'queued': 'info',
            'committed': 'info',
            'dropped': 'warning',
            'failed': 'danger',
        }
        rows = ''.join(
            f'<tr class="{style.get(r.outcome, "")}">'
            f'<td>{escape(r.subject)}</td>'
            f'<td>{escape(", ".join(r.recipients))}</td>'
            f'<td>{r.size:,}&nbsp;B</td><td>{escape(r.delivery)}</td>'
            f'<td><strong>{escape(r.outcome)}</strong>'
            f'{"<br>" + escape(r.detail) if r.detail else ""}</td></tr>'
            f'<tr><td colspan="5"><small>{escape(r.message_id)}</small>'
            f'<pre>{escape(r.preview)}</pre></td></tr>'
            for r in records
        )
        return link + (
            '<table class="table table-condensed" id="pyramid-txmail-mail">'
            '<thead><tr><th>Subject</th><th>Recipients</th><th>Size</th>'
            '<th>Delivery</th><th>Outcome</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>'
        )


def _previews_url(request: Any) -> str | None:
    """The application's mail previews page, if it serves one."""
    mapper = request.registry.queryUtility(IRoutesMapper)
    if mapper is None or mapper.get_route(PREVIEWS_ROUTE) is None:
        return None
    url: str = request.route_url(PREVIEWS_ROUTE)
    return url


def includeme(config: Any) -> None:
    """``debugtoolbar.includes = pyramid_txmail.toolbar``: pyramid_debugtoolbar's
    own way of adding a panel, the same as ``debugtoolbar.extra_panels``."""
    config.add_debugtoolbar_panel(MailPanel)
