"""Mail previews in the browser, for development only.

``config.add_mail_previews('myapp.previews', route_prefix='/_mail')`` serves
a page listing the module's preview functions and, for each, the headers,
the text and the HTML (in a sandboxed iframe) of the mail its template
renders, without sending anything. Nothing is served unless the
application calls the directive.

A preview function is any public function defined in that module. It
takes the request (or nothing) and returns ``(template_name, values)``, or
``(template_name, values, message_keywords)``::

    def welcome(request):
        return 'myapp:templates/welcome.jinja2', {'name': 'Ann'}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from html import escape
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from pyramid.path import package_of
from pyramid.response import Response

from .exceptions import MailError
from .interfaces import IMailSettings
from .templates import TemplatedMessage, from_template

__all__ = ['add_mail_previews']

# Who a preview is addressed to when its function names nobody.
PREVIEW_RECIPIENT = 'preview@example.com'
PREVIEW_SENDER = 'preview@localhost'

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; vertical-align: top; padding: .15em .8em .15em 0; }}
th {{ color: #666; font-weight: normal; }}
pre {{ background: #f6f6f6; padding: .8em; white-space: pre-wrap; }}
iframe {{ width: 100%; height: 32em; border: 1px solid #ccc; }}
.error {{ color: #a00; }}
</style></head>
<body>
<p><a href="{index}">Mail previews</a> (development only; nothing is sent)</p>
{content}
</body></html>
"""


#: The route of the previews' list, which the debug-toolbar panel links to.
PREVIEWS_ROUTE = 'pyramid_txmail.previews'


def add_mail_previews(
    config: Configurator,
    module: str | ModuleType,
    route_prefix: str = '/_mail',
) -> None:
    """Serve previews of the mails ``module``'s functions describe.

    ``module`` is a module or its dotted name. The list is at
    ``route_prefix + '/'``, each preview at ``route_prefix + '/NAME'`` (add
    ``?locale=fr`` to render in another locale), its HTML alone at
    ``.../NAME/html``. For development only: the pages show whatever the
    sample values hold, to anyone who can reach them.
    """
    resolved: ModuleType = config.maybe_dotted(module)
    prefix = '/' + route_prefix.strip('/')
    previews = Previews(resolved, prefix)
    config.add_route(PREVIEWS_ROUTE, prefix + '/')
    config.add_route('pyramid_txmail.preview', prefix + '/{name}')
    config.add_route('pyramid_txmail.preview_html', prefix + '/{name}/html')
    config.add_view(previews.index, route_name=PREVIEWS_ROUTE)
    config.add_view(previews.show, route_name='pyramid_txmail.preview')
    config.add_view(previews.html, route_name='pyramid_txmail.preview_html')


class Previews:
    """The preview views for one module of preview functions."""

    def __init__(self, module: ModuleType, prefix: str):
        self.module = module
        self.prefix = prefix

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The module's preview functions by name, in definition order."""
        return {
            name: value
            for name, value in vars(self.module).items()
            if inspect.isfunction(value)
            and not name.startswith('_')
            and value.__module__ == self.module.__name__
        }

    def index(self, request: Any) -> Response:
        items = ''.join(
            f'<li><a href="{escape(self.prefix)}/{escape(name)}">'
            f'{escape(name)}</a>{_summary(function)}</li>'
            for name, function in self.functions().items()
        )
        content = (
            f'<h1>Mail previews</h1><ul id="previews">{items}</ul>'
            if items
            else f'<h1>Mail previews</h1><p>{escape(self.module.__name__)} '
            'has no preview functions.</p>'
        )
        return self._page('Mail previews', content)

    def show(self, request: Any) -> Response:
        name = request.matchdict['name']
        settings = request.registry.queryUtility(IMailSettings)
        sender = (settings and settings.default_sender) or PREVIEW_SENDER
        try:
            message = self._render(request, name)
            headers = message.to_message(default_sender=sender)
        except MailError as exc:
            content = (
                f'<h1>{escape(name)}</h1><pre class="error">{escape(str(exc))}</pre>'
            )
            return self._page(name, content, status=500)
        rows = ''.join(
            f'<tr><th>{escape(key)}</th><td>{escape(str(value))}</td></tr>'
            for key, value in headers.items()
        )
        html = (
            f'<h2>HTML</h2><iframe id="html" sandbox="" title="HTML part" '
            f'src="{escape(self.prefix)}/{escape(name)}/html{_query(request)}">'
            '</iframe>'
            if message.html is not None
            else '<h2>HTML</h2><p id="html">This mail has no HTML part.</p>'
        )
        content = (
            f'<h1>{escape(name)}</h1>'
            f'<p>Template <code id="template">{escape(message.template)}</code></p>'
            f'<h2>Headers</h2><table id="headers">{rows}</table>'
            f'{html}<h2>Text</h2><pre id="text">{escape(str(message.body))}</pre>'
        )
        return self._page(name, content)

    def html(self, request: Any) -> Response:
        message = self._render(request, request.matchdict['name'])
        if message.html is None:
            raise HTTPNotFound('this mail has no HTML part')
        response = Response(str(message.html), content_type='text/html')
        # Even opened outside its iframe, the mail's HTML runs no script.
        response.headers['Content-Security-Policy'] = 'sandbox'
        return response

    def _render(self, request: Any, name: str) -> TemplatedMessage:
        function = self.functions().get(name)
        if function is None:
            raise HTTPNotFound(f'no preview named {name!r}')
        takes_request = bool(inspect.signature(function).parameters)
        result = function(request) if takes_request else function()
        template, values, *rest = result
        kw = dict(rest[0]) if rest else {}
        kw.setdefault('recipients', [PREVIEW_RECIPIENT])
        locale = request.params.get('locale') or kw.pop('locale', None)
        kw.pop('locale', None)
        return from_template(
            template,
            values,
            request=request,
            package=package_of(self.module),
            locale=locale,
            **kw,
        )

    def _page(self, title: str, content: str, status: int = 200) -> Response:
        body = _PAGE.format(
            title=escape(title), index=escape(self.prefix) + '/', content=content
        )
        return Response(body, status=status, content_type='text/html', charset='utf-8')


def _summary(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function)
    if not doc:
        return ''
    return f' &ndash; {escape(doc.splitlines()[0])}'


def _query(request: Any) -> str:
    locale = request.params.get('locale')
    return escape('?' + urlencode({'locale': locale})) if locale else ''
