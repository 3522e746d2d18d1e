"""The catcher's web UI and JSON API (a small Pyramid app).

Everything shown comes from whoever sent the mail, so every value is
escaped, message HTML is shown only in a sandboxed iframe served with a
``sandbox`` Content-Security-Policy (no script runs, no remote content
loads), and the pages themselves allow only the catcher's own script.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any
from urllib.parse import quote

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden, HTTPNotFound, HTTPSeeOther
from pyramid.response import Response

from ..settings import is_loopback
from .store import CaughtMessage, MailStore

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "frame-src 'self'; connect-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# The message's own HTML: a sandbox (no script, no same origin), inline
# styles and data: images only, shown only inside the catcher's pages.
MAIL_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; frame-ancestors 'self'"
)
ATTACHMENT_CSP = "sandbox; default-src 'none'"

CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#2a3f54;color:#fff;padding:.6em 1em;display:flex;gap:1em;
align-items:center}
header a{color:#fff;font-weight:bold;text-decoration:none}
header form{margin:0}
main{padding:1em}
input[type=search]{padding:.3em;width:22em}
table{border-collapse:collapse;width:100%}
td,th{padding:.35em .6em;text-align:left;border-bottom:1px solid #ddd;
vertical-align:top}
th{background:#f4f4f4}
tr.message:hover{background:#f0f6ff}
.num{text-align:right;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;
padding:.6em;border:1px solid #ddd}
iframe{width:100%;height:28em;border:1px solid #ddd;background:#fff}
nav.tabs a{margin-right:1em}
.muted{color:#777}
button{cursor:pointer}
"""

# Polls the JSON API and rebuilds the rows with textContent only.
JS = """
(function () {
  var table = document.getElementById('messages');
  if (!table) return;
  var body = table.tBodies[0];
  var search = document.getElementById('q');
  var count = document.getElementById('count');
  var shown = table.getAttribute('data-ids');
  function cell(row, text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  function render(messages) {
    var ids = messages.map(function (m) { return m.id; }).join(' ');
    if (ids === shown) return;
    shown = ids;
    while (body.firstChild) body.removeChild(body.firstChild);
    messages.forEach(function (m) {
      var row = document.createElement('tr');
      row.className = 'message';
      row.setAttribute('data-id', m.id);
      cell(row, m.received.substring(11, 19));
      cell(row, m.from);
      cell(row, m.to);
      var link = document.createElement('a');
      link.href = 'messages/' + encodeURIComponent(m.id);
      link.textContent = m.subject || '(no subject)';
      cell(row, '').appendChild(link);
      cell(row, m.attachments ? String(m.attachments) : '', 'num');
      cell(row, m.size + ' B', 'num');
      body.appendChild(row);
    });
    count.textContent = String(messages.length);
  }
  function poll() {
    var url = 'api/messages?q=' + encodeURIComponent(search.value);
    fetch(url, {cache: 'no-store'}).then(function (r) { return r.json(); })
      .then(function (data) { render(data.messages); })
      .catch(function () {});
  }
  search.addEventListener('input', function () {
    history.replaceState(null, '', '?q=' + encodeURIComponent(search.value));
    poll();
  });
  setInterval(poll, 1000);
})();
"""


def _size(n: int) -> str:
    return f'{n} B' if n < 1024 else f'{n / 1024:.1f} KB'


def _page(request: Any, title: str, body: str, status: int = 200) -> Response:
    previews = request.registry.catcher_previews
    link = (
        f' · <a id="previews" href="{escape(previews)}">Mail previews</a>'
        if previews
        else ''
    )
    html = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f'<title>{escape(title)} · pyramid-txmail catch</title>'
        '<link rel="stylesheet" href="/static/catcher.css"></head><body>'
        f'<header><a href="/">pyramid-txmail catch</a>{link}</header>'
        f'<main>{body}</main><script src="/static/catcher.js"></script>'
        '</body></html>'
    )
    return Response(html, status=status, charset='utf-8')


def _get(request: Any) -> CaughtMessage:
    message: CaughtMessage | None = request.registry.catcher_store.get(
        request.matchdict['id']
    )
    if message is None:
        raise HTTPNotFound()
    return message


def _row(m: CaughtMessage) -> str:
    return (
        f'<tr class="message" data-id="{m.id}">'
        f'<td>{m.received:%H:%M:%S}</td><td>{escape(m.sender)}</td>'
        f'<td>{escape(m.to)}</td><td><a href="messages/{m.id}">'
        f'{escape(m.subject) or "(no subject)"}</a></td>'
        f'<td class="num">{len(m.attachments) or ""}</td>'
        f'<td class="num">{len(m.raw)} B</td></tr>'
    )


def index(request: Any) -> Response:
    query = request.params.get('q', '')
    messages = request.registry.catcher_store.list(query)
    rows = ''.join(_row(m) for m in messages)
    ids = ' '.join(m.id for m in messages)
    return _page(
        request,
        'Messages',
        '<form method="get" action="/" role="search">'
        f'<input type="search" id="q" name="q" value="{escape(query)}" '
        'placeholder="Search subject, addresses, text" autofocus> '
        f'<span id="count">{len(messages)}</span> message(s) '
        '<span class="muted">(refreshes by itself)</span></form>'
        '<form method="post" action="/delete-all" id="delete-all">'
        '<p><button>Delete all</button></p></form>'
        f'<table id="messages" data-ids="{ids}"><thead><tr><th>Time (UTC)</th>'
        '<th>From</th><th>To</th><th>Subject</th><th class="num">Files</th>'
        f'<th class="num">Size</th></tr></thead><tbody>{rows}</tbody></table>',
    )


def message(request: Any) -> Response:
    m = _get(request)
    summary = ''.join(
        f'<tr><th>{name}</th><td>{escape(value)}</td></tr>'
        for name, value in [
            ('From', m.sender),
            ('To', m.to),
            ('Subject', m.subject),
            ('Envelope from', m.mail_from),
            ('Envelope to', ', '.join(m.rcpt_tos)),
            ('Received', f'{m.received:%Y-%m-%d %H:%M:%S} UTC'),
        ]
    )
    headers = ''.join(
        f'<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>'
        for name, value in m.headers()
    )
    files = ''.join(
        f'<tr><td><a href="/messages/{m.id}/attachments/{p.index}" download>'
        f'{escape(p.filename)}</a></td><td>{escape(p.content_type)}</td>'
        f'<td class="num">{_size(p.size)}</td></tr>'
        for p in m.attachments
    )
    html = (
        f'<iframe id="html" sandbox src="/messages/{m.id}/html" '
        'referrerpolicy="no-referrer" title="HTML part"></iframe>'
        if m.html is not None
        else '<p class="muted" id="html">No HTML part.</p>'
    )
    return _page(
        request,
        m.subject or '(no subject)',
        f'<h1 id="subject">{escape(m.subject) or "(no subject)"}</h1>'
        f'<form method="post" action="/messages/{m.id}/delete" id="delete">'
        '<p><button>Delete</button> '
        f'<a href="/messages/{m.id}/raw">Raw source</a> · '
        f'<a href="/messages/{m.id}/raw?download=1">Download .eml</a></p>'
        f'</form><table id="summary">{summary}</table>'
        '<nav class="tabs"><a href="#html-part">HTML</a><a href="#text-part">'
        'Text</a><a href="#headers-part">Headers</a><a href="#files-part">'
        'Attachments</a><a href="#raw-part">Raw</a></nav>'
        f'<h2 id="html-part">HTML</h2>{html}'
        f'<h2 id="text-part">Text</h2><pre id="text">{escape(m.text)}</pre>'
        f'<h2 id="headers-part">Headers</h2><table id="headers">{headers}</table>'
        '<h2 id="files-part">Attachments</h2><table id="attachments">'
        '<thead><tr><th>File</th><th>Type</th><th class="num">Size</th></tr>'
        f'</thead><tbody>{files}</tbody></table>'
        '<h2 id="raw-part">Raw source</h2>'
        f'<pre id="raw">{escape(m.raw.decode("utf-8", "replace"))}</pre>',
    )


def message_html(request: Any) -> Response:
    m = _get(request)
    response = Response(m.html or '', charset='utf-8')
    response.headers['Content-Security-Policy'] = MAIL_CSP
    return response


def _ascii_name(name: str) -> str:
    # The quoted fallback keeps printable ASCII only: no quote, backslash,
    # CR or LF can end the header value or start another.
    return re.sub(r'[^A-Za-z0-9._ -]', '_', name)[:100] or 'file'


def _download(body: bytes, content_type: str, filename: str) -> Response:
    response = Response(body=body, content_type=content_type)
    response.headers['Content-Disposition'] = (
        f'attachment; filename="{_ascii_name(filename)}"; '
        f"filename*=UTF-8''{quote(filename, safe='')}"
    )
    response.headers['Content-Security-Policy'] = ATTACHMENT_CSP
    return response


def raw(request: Any) -> Response:
    m = _get(request)
    if request.params.get('download'):
        return _download(m.raw, 'message/rfc822', f'{m.id}.eml')
    response = Response(body=m.raw, content_type='text/plain', charset='utf-8')
    response.headers['Content-Security-Policy'] = ATTACHMENT_CSP
    return response


def attachment(request: Any) -> Response:
    m = _get(request)
    index = int(request.matchdict['index'])
    if index >= len(m.attachments):
        raise HTTPNotFound()
    part = m.attachments[index]
    return _download(part.data, part.content_type, part.filename)


def delete(request: Any) -> HTTPSeeOther:
    request.registry.catcher_store.delete(request.matchdict['id'])
    return HTTPSeeOther('/')


def delete_all(request: Any) -> HTTPSeeOther:
    request.registry.catcher_store.clear()
    return HTTPSeeOther('/')


def api_list(request: Any) -> dict[str, Any]:
    messages = request.registry.catcher_store.list(request.params.get('q', ''))
    return {'messages': [m.summary() for m in messages]}


def api_get(request: Any) -> dict[str, Any]:
    return _get(request).detail()


def api_delete(request: Any) -> dict[str, int]:
    if not request.registry.catcher_store.delete(request.matchdict['id']):
        raise HTTPNotFound()
    return {'deleted': 1}


def api_delete_all(request: Any) -> dict[str, int]:
    return {'deleted': request.registry.catcher_store.clear()}


def static(content_type: str, text: str) -> Any:
    def view(request: Any) -> Response:
        return Response(text, content_type=content_type, charset='utf-8')

    return view


def security_tween(handler: Any, registry: Any) -> Any:
    """Headers for every answer; and, on loopback, only loopback Host names
    (a web page elsewhere cannot rebind its DNS name to 127.0.0.1 and read
    the mail) and no cross-site form posts (or a page could delete it)."""

    def tween(request: Any) -> Any:
        if registry.catcher_check_host:
            host = request.host.rsplit(':', 1)[0] if request.host else ''
            if not is_loopback(host):
                return HTTPForbidden('pyramid-txmail catch: Host not allowed')
            origin = request.headers.get('Origin')
            if request.method != 'GET' and origin not in (
                None,
                f'{request.scheme}://{request.host}',
            ):
                return HTTPForbidden('pyramid-txmail catch: cross-site request')
        response = handler(request)
        response.headers.setdefault('Content-Security-Policy', PAGE_CSP)
        response.headers['X-Content-Type-Options'] = 'nosniff'
        response.headers['Referrer-Policy'] = 'same-origin'
        response.headers['Cache-Control'] = 'no-store'
        return response

    return tween


def make_app(
    store: MailStore, *, check_host: bool = True, previews: str | None = None
) -> Any:
    """The WSGI app showing ``store``; ``previews``, an application's mail
    previews page, is linked from every page."""
    with Configurator() as config:
        config.registry.catcher_store = store
        config.registry.catcher_previews = previews
        config.registry.catcher_check_host = check_host
        config.add_tween('pyramid_txmail.catcher.web.security_tween')
        views: list[tuple[str, str, str, Any, str | None]] = [
            ('index', '/', 'GET', index, None),
            ('message', '/messages/{id}', 'GET', message, None),
            ('html', '/messages/{id}/html', 'GET', message_html, None),
            ('raw', '/messages/{id}/raw', 'GET', raw, None),
            (
                'attachment',
                r'/messages/{id}/attachments/{index:\d+}',
                'GET',
                attachment,
                None,
            ),
            ('delete', '/messages/{id}/delete', 'POST', delete, None),
            ('delete_all', '/delete-all', 'POST', delete_all, None),
            ('api_list', '/api/messages', 'GET', api_list, 'json'),
            ('api_clear', '/api/messages', 'DELETE', api_delete_all, 'json'),
            ('api_get', '/api/messages/{id}', 'GET', api_get, 'json'),
            ('api_delete', '/api/messages/{id}', 'DELETE', api_delete, 'json'),
            ('css', '/static/catcher.css', 'GET', static('text/css', CSS), None),
            (
                'js',
                '/static/catcher.js',
                'GET',
                static('application/javascript', JS),
                None,
            ),
        ]
        for name, pattern, method, view, renderer in views:
            config.add_route(name, pattern, request_method=method)
            config.add_view(view, route_name=name, renderer=renderer)
    return config.make_wsgi_app()
