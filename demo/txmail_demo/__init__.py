"""The pyramid_txmail demo: sign up, see the mail that was caught, watch the queue.

Everything mail-related is what the docs tell users to write:
``config.include('pyramid_txmail')`` and ``request.mailer.send_template(...)``,
whose templates (``templates/welcome.*.jinja2``) extend a layout and whose
preview (``previews.py``) is served at ``/_mail/``.
The mail is caught by ``pyramid-txmail catch`` (its web UI shows it); the
rest is a few pages of plain HTML.
"""

from __future__ import annotations

import os
from html import escape
from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.response import Response

from pyramid_txmail import Attachment
from pyramid_txmail.queue import MailQueue
from pyramid_txmail.templates import mail_autoescape

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} · pyramid_txmail demo</title>
<style>body{{font:16px sans-serif;max-width:50em;margin:2em auto}}
td,th{{padding:.2em .8em;text-align:left}}
.note{{background:#eef;padding:.5em 1em}}</style></head>
<body><nav><a href="/">Sign up</a> · <a id="caught" href="{catcher}">Caught mail</a> ·
<a href="/queue">Queue</a> · <a id="previews" href="/_mail/">Mail previews</a></nav><h1>{title}</h1>{body}</body></html>"""


def page(request: Any, title: str, body: str, status: int = 200) -> Response:
    catcher = request.registry.settings.get('demo.catcher_url', '')
    html = PAGE.format(title=escape(title), body=body, catcher=escape(catcher))
    return Response(html, status=status)


def signup_form(request: Any) -> Response:
    note = request.params.get('note', '')
    return page(
        request,
        'Sign up',
        (f'<p class="note" id="note">{escape(note)}</p>' if note else '')
        + """<form method="post" action="/signup">
<p><label>Name <input name="name" required></label></p>
<p><label>Email <input name="email" type="email" required></label></p>
<p><label><input type="checkbox" name="fail"> fail after sending
(the view raises: the transaction aborts and no mail leaves)</label></p>
<p>An address <code>defer@...</code> is deferred by the catcher (451) and
retried; <code>reject@...</code> fails (550): see the <a href="/queue">queue</a>.</p>
<p><button type="submit">Sign up</button></p></form>""",
    )


def signup(request: Any) -> HTTPFound:
    """Send the welcome message in the request's transaction."""
    name = request.params['name']
    # Subject and HTML from templates/welcome.*.jinja2 (the HTML extends a
    # layout; its CSS is inlined); the text part is derived from the HTML.
    request.mailer.send_template(
        'txmail_demo:templates/welcome.jinja2',
        {'name': name, 'link': request.application_url + '/'},
        recipients=[request.params['email']],
        attachments=[
            Attachment(
                filename='welcome.txt',
                content_type='text/plain',
                data=f'Welcome aboard, {name}.\n',
            )
        ],
    )
    if 'fail' in request.params:
        raise RuntimeError('failed after sending, on purpose')
    return HTTPFound('/?note=Welcome+mail+sent+when+the+transaction+committed.')


def failed_view(exc: Exception, request: Any) -> Response:
    # pyramid_tm has already aborted the transaction: the mail is gone too.
    return page(
        request,
        'The request failed',
        f'<p class="note" id="note">{escape(str(exc))}: the transaction was '
        'aborted, so no mail was sent. Check the caught mail (link above).</p>',
        status=500,
    )


def _queue(request: Any) -> MailQueue:
    return MailQueue(request.registry.settings['mail.queue_path'])


def queue(request: Any) -> Response:
    q = _queue(request)
    counts = q.counts()
    cells = ''.join(
        f'<tr><th>{state}</th><td id="{state}">{counts[state]}</td></tr>'
        for state in ('queued', 'deferred', 'sending', 'failed')
    )

    def rows(infos: Any) -> str:
        return ''.join(
            f'<tr><td>{escape(i.state)}</td><td>{escape(", ".join(i.recipients))}</td>'
            f'<td>{i.attempts}</td><td>{escape(i.last_error or "")}</td></tr>'
            for i in infos
        )

    waiting = rows(i for i in q.list() if i.state == 'deferred')
    failed = rows(q.list(failed=True))
    head = (
        '<tr><th>State</th><th>Recipients</th><th>Attempts</th><th>Last error</th></tr>'
    )
    return page(
        request,
        'Queue',
        f'<table>{cells}</table>'
        f'<h2>Deferred (retried later)</h2><table id="deferred-list">{head}{waiting}</table>'
        f'<h2>Failed</h2><table id="failed-list">{head}{failed}</table>'
        '<form method="post" action="/queue/flush"><button id="flush">Send deferred messages now</button></form>'
        '<form method="post" action="/queue/retry"><button id="retry">Retry failed and deferred messages</button></form>'
        f'<p>The same from a shell: <code id="cli">{escape(_cli(request))}</code>'
        ' (and <code>flush</code>, <code>retry --all</code>, <code>show ID</code>).</p>',
    )


def _cli(request: Any) -> str:
    # The .ini's variables, as pserve was given them (pyramid-txmail takes
    # them the same way).
    settings = request.registry.settings
    var_dir = os.path.dirname(settings['mail.queue_path'])
    # From the repository, as `make demo` runs it (the demo is not installed).
    return (
        'PYTHONPATH=demo .venv/bin/pyramid-txmail list demo/development.ini '
        f'smtp_port={settings["mail.port"]} var_dir={var_dir} '
        f'catcher_url={settings.get("demo.catcher_url", "")}'
    )


def flush(request: Any) -> HTTPFound:
    _queue(request).flush()
    return HTTPFound('/queue')


def retry(request: Any) -> HTTPFound:
    _queue(request).retry()
    return HTTPFound('/queue')


def main(global_config: dict[str, str], **settings: str) -> Any:
    """The WSGI application (``use = call:txmail_demo:main``)."""
    with Configurator(settings=settings) as config:
        config.include('pyramid_jinja2')
        config.include('pyramid_txmail')
        # Development only: the mail previews at /_mail/.
        config.add_mail_previews('txmail_demo.previews', route_prefix='/_mail')
        for name, pattern, view, method in [
            ('home', '/', signup_form, 'GET'),
            ('signup', '/signup', signup, 'POST'),
            ('queue', '/queue', queue, 'GET'),
            ('retry', '/queue/retry', retry, 'POST'),
            ('flush', '/queue/flush', flush, 'POST'),
        ]:
            config.add_route(name, pattern, request_method=method)
            config.add_view(view, route_name=name)
        config.add_exception_view(failed_view, RuntimeError)
    # HTML-escape in HTML parts only, never in subjects and text parts.
    config.get_jinja2_environment().autoescape = mail_autoescape
    return config.make_wsgi_app()
