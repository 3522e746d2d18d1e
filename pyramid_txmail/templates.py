"""Templated mail: subject, text and HTML rendered by Pyramid's renderers.

:func:`render_mail` renders the parts of one mail through
:func:`pyramid.renderers.render`, so any installed renderer (pyramid_jinja2,
pyramid_chameleon, ...) works, with the request, its localizer and the
renderer's own layouts. It is what ``Mailer.send_template()``,
``Message.from_template()`` and the previews use.

A template name maps to three files (see :doc:`templates`)::

    myapp:templates/welcome.jinja2  ->  welcome.subject.jinja2
                                        welcome.txt.jinja2
                                        welcome.html.jinja2
    myapp:templates/welcome         ->  welcome.subject.txt
                                        welcome.txt
                                        welcome.html

The HTML is made for mail clients (CSS inlined) and a missing text part is
derived from it (:func:`html_to_text`), at render time, so what a test or a
preview sees is what is sent.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import ModuleType
from typing import Any

import css_inline
from pyramid.i18n import make_localizer
from pyramid.interfaces import ILocalizer, ITranslationDirectories
from pyramid.path import AssetResolver, caller_package
from pyramid.renderers import render
from pyramid.request import Request, apply_request_extensions
from pyramid.threadlocal import (
    RequestContext,
    get_current_registry,
    get_current_request,
)

from .exceptions import MailError
from .interfaces import IMailSettings
from .message import Message

__all__ = [
    'RenderedMail',
    'TemplatedMessage',
    'from_template',
    'html_to_text',
    'mail_autoescape',
    'render_mail',
    'template_files',
]


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """The parts of a rendered template, exactly as they will be sent.

    ``body`` is the text part (derived from ``html`` when the template has
    none); ``html`` is None for a template without an HTML part.
    """

    subject: str | None
    body: str
    html: str | None


@dataclass
class TemplatedMessage(Message):
    """A :class:`~pyramid_txmail.Message` made from a template.

    It is a ``Message`` in every way, and also says where it came from:
    ``template`` (the name as given), ``template_values`` (the values as
    given, without the ``request`` the templates also saw) and ``locale``
    (the locale it was rendered in, None for the request's own). Tests read
    these from :class:`~pyramid_txmail.testing.DummyMailer`'s records
    instead of parsing MIME.
    """

    template: str = ''
    template_values: Mapping[str, Any] = field(default_factory=dict)
    locale: str | None = None


def template_files(name: str) -> tuple[str, str, str]:
    """The (subject, text, html) file names for the template ``name``.

    A name whose last segment has an extension names the renderer for all
    three parts: ``welcome.jinja2`` gives ``welcome.subject.jinja2``,
    ``welcome.txt.jinja2`` and ``welcome.html.jinja2``. A name without one
    gives ``welcome.subject.txt``, ``welcome.txt`` and ``welcome.html``,
    each rendered by whatever renderer the application registered for
    ``.txt`` and ``.html``.
    """
    # The package of an asset spec (myapp.mail:welcome) has dots of its own.
    package, colon, path = name.rpartition(':')
    stem, ext = posixpath.splitext(path)
    if ext:
        stem = package + colon + stem
        return f'{stem}.subject{ext}', f'{stem}.txt{ext}', f'{stem}.html{ext}'
    return f'{name}.subject.txt', f'{name}.txt', f'{name}.html'


def mail_autoescape(template_name: str | None) -> bool:
    """Jinja2 autoescaping for mail: on, except in subject and text parts.

    pyramid_jinja2 escapes HTML in every template by default, which would
    turn ``Tom & Jerry`` into ``Tom &amp; Jerry`` in a plain-text mail. Set
    it as the environment's ``autoescape`` (see :doc:`templates`).
    """
    if template_name is None:
        return True
    base = posixpath.basename(template_name.replace(os.sep, '/'))
    return not ('.subject.' in base or '.txt.' in base or base.endswith('.txt'))


def render_mail(
    name: str,
    values: Mapping[str, Any] | None = None,
    *,
    request: Any = None,
    package: ModuleType | None = None,
    locale: str | None = None,
    inline_css: bool = True,
    need_subject: bool = True,
) -> RenderedMail:
    """Render the template ``name`` into a subject, a text and an HTML part.

    ``request`` is given to the templates (and its localizer translates);
    without one, a blank request on the current registry is made. A
    relative ``name`` is relative to ``package`` (default: the caller's
    package), as in :func:`pyramid.renderers.render`. With ``locale``, the
    templates render in that locale whatever the request's. ``need_subject``
    False allows a template without a subject part (the caller has one).

    Raises :class:`~pyramid_txmail.MailError` naming the template for a
    missing part, a renderer's error, or a subject that is not one line.
    """
    values = {} if values is None else values
    if package is None:
        package = caller_package()
    if request is None:
        request = _blank_request()
    subject_file, text_file, html_file = template_files(name)
    have_subject = _exists(subject_file, package)
    have_text = _exists(text_file, package)
    have_html = _exists(html_file, package)
    if need_subject and not have_subject:
        raise MailError(
            f'template {name!r}: no subject template {subject_file!r} '
            '(or pass subject=)',
            field='template',
            value=name,
        )
    if not (have_text or have_html):
        raise MailError(
            f'template {name!r}: neither {text_file!r} nor {html_file!r} exists',
            field='template',
            value=name,
        )
    with _in_locale(request, locale), RequestContext(request):
        subject = (
            _render(name, subject_file, values, request, package)
            if have_subject
            else None
        )
        text = _render(name, text_file, values, request, package) if have_text else None
        html = _render(name, html_file, values, request, package) if have_html else None
    if subject is not None:
        subject = subject.strip()
        if '\r' in subject or '\n' in subject:
            raise MailError(
                f'template {name!r}: the subject ({subject_file!r}) must be '
                f'one line, got {subject!r}',
                field='subject',
                value=subject,
            )
    if html is not None and inline_css:
        html = _inline_css(html)
    if text is None:
        # Exactly one of the two exists (checked above).
        text = html_to_text(html)  # type: ignore[arg-type]
    return RenderedMail(subject, text, html)


def _blank_request() -> Request:
    # What pyramid.scripting.prepare() makes: a request outside a server, so
    # that templates still get request.route_url() and a localizer.
    registry = get_current_registry()
    request = Request.blank('/')
    request.registry = registry
    apply_request_extensions(request)
    return request


def _exists(spec: str, package: ModuleType) -> bool:
    if os.path.isabs(spec):
        return os.path.isfile(spec)
    if ':' not in spec:
        spec = f'{package.__name__}:{spec}'
    try:
        return bool(AssetResolver().resolve(spec).exists())
    except ImportError:
        return False


def _render(
    name: str,
    part: str,
    values: Mapping[str, Any],
    request: Any,
    package: ModuleType | None,
) -> str:
    try:
        # A copy: BeforeRender subscribers may add to what they are given.
        result = render(part, dict(values), request=request, package=package)
    except Exception as exc:
        raise MailError(
            f'template {name!r}: rendering {part!r} failed: '
            f'{type(exc).__name__}: {exc}',
            field='template',
            value=name,
        ) from exc
    if isinstance(result, bytes):
        return result.decode('utf-8')
    return str(result)


@contextmanager
def _in_locale(request: Any, locale: str | None) -> Iterator[None]:
    """Within the block, ``request``'s localizer speaks ``locale``.

    Pyramid reifies ``localizer`` and ``locale_name`` on the request, so
    both are replaced for the render and put back after it; renderers (the
    jinja2 i18n extension, chameleon's ``i18n:translate``) find the
    localizer through the request.
    """
    if locale is None:
        yield
        return
    names = ('localizer', 'locale_name')
    saved = {key: request.__dict__[key] for key in names if key in request.__dict__}
    request.localizer = _localizer(request.registry, locale)
    request.locale_name = locale
    try:
        yield
    finally:
        for key in names:
            request.__dict__.pop(key, None)
        request.__dict__.update(saved)


def _localizer(registry: Any, locale: str) -> Any:
    # As pyramid's request.localizer: one localizer per locale, kept in the
    # registry, reading the application's translation directories.
    localizer = registry.queryUtility(ILocalizer, name=locale)
    if localizer is None:
        directories = registry.queryUtility(ITranslationDirectories, default=[])
        localizer = make_localizer(locale, directories)
        registry.registerUtility(localizer, ILocalizer, name=locale)
    return localizer


def _inline_css(html: str) -> str:
    # Remote stylesheets are never fetched while sending; @media rules stay
    # in a <style> element, since they cannot be inlined.
    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
    return str(inliner.inline(html))


# -- HTML to readable text

_BLOCKS = frozenset(
    [
        'address',
        'article',
        'aside',
        'blockquote',
        'dd',
        'div',
        'dl',
        'dt',
        'fieldset',
        'figcaption',
        'figure',
        'footer',
        'form',
        'h1',
        'h2',
        'h3',
        'h4',
        'h5',
        'h6',
        'header',
        'hr',
        'li',
        'main',
        'nav',
        'ol',
        'p',
        'pre',
        'section',
        'table',
        'tr',
        'ul',
    ]
)
_SKIPPED = frozenset(['head', 'script', 'style', 'template', 'title'])
_SPACE = re.compile(r'[ \t\r\n\f]+')


class _TextParser(HTMLParser):
    """Collects the readable text of an HTML document.

    Blocks become paragraphs, ``<br>`` a line break, list items ``- `` or
    ``1. `` lines, links ``text (url)``, images their alt text, table cells
    are separated by two spaces; ``<pre>`` keeps its lines.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line = ''
        self.prefix = ''  # a list item's marker, written with its first text
        self.skip = 0
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [next number] or []
        self.tables = 0
        self.links: list[tuple[str, int]] = []  # (href, where the text began)
        self.blank = False  # a paragraph break is owed before the next text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skip += 1
            return
        if tag == 'br':
            self._end_line()
            return
        if tag in _BLOCKS:
            self._end_block()
        if tag == 'pre':
            self.pre += 1
        elif tag == 'ul':
            self.lists.append([])
        elif tag == 'ol':
            self.lists.append([1])
        elif tag == 'table':
            self.tables += 1
        elif tag == 'li':
            self._li_marker()
        elif tag in ('td', 'th') and self.line.strip():
            self.line += '  '
        elif tag == 'a':
            self._open()
            self.links.append((dict(attrs).get('href') or '', len(self.line)))
        elif tag == 'img':
            self._text(dict(attrs).get('alt') or '')

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip = max(0, self.skip - 1)
            return
        if tag == 'a' and self.links:
            href, start = self.links.pop()
            shown = self.line[start:].strip()
            if href and not href.startswith(('#', 'javascript:')) and href != shown:
                self._text(f' ({href})' if shown else href, raw=True)
        if tag == 'pre':
            self.pre = max(0, self.pre - 1)
        elif tag in ('ul', 'ol') and self.lists:
            self.lists.pop()
        elif tag == 'table' and self.tables:
            self.tables -= 1
        if tag in _BLOCKS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            first, *rest = data.split('\n')
            self._text(first, raw=True)
            for piece in rest:
                self._end_line()
                self._text(piece, raw=True)
            return
        self._text(_SPACE.sub(' ', data))

    def _text(self, text: str, raw: bool = False) -> None:
        if not raw and (not self.line or self.line.endswith(' ')):
            text = text.lstrip(' ')
        if text:
            self._open()
            self.line += text

    def _open(self) -> None:
        # Pay a paragraph break owed, and write a pending list marker.
        if self.blank and self.lines:
            self.lines.append('')
        self.blank = False
        if not self.line:
            self.line, self.prefix = self.prefix, ''

    def _li_marker(self) -> None:
        depth = max(0, len(self.lists) - 1)
        numbers = self.lists[-1] if self.lists else []
        if numbers:
            self.prefix = f'{"  " * depth}{numbers[0]}. '
            numbers[0] += 1
        else:
            self.prefix = f'{"  " * depth}- '

    def _end_line(self) -> None:
        self.lines.append(self.line.rstrip())
        self.line = ''

    def _end_block(self) -> None:
        if self.line.strip():
            self._end_line()
        self.line = ''
        # List items and table rows are lines, not paragraphs.
        if not (self.lists or self.tables):
            self.blank = True

    def text(self) -> str:
        self._end_block()
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return '\n'.join(self.lines) + '\n' if self.lines else ''


def html_to_text(html: str) -> str:
    """A readable plain-text version of ``html``, for the text part.

    Paragraphs and headings are separated by a blank line, ``<br>`` breaks
    a line, list items start with ``- `` (numbered in ``<ol>``), links keep
    their address as ``text (url)``, images their alt text; ``<head>``,
    ``<style>`` and ``<script>`` are left out. Uses only
    :mod:`html.parser`.
    """
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    return parser.text()


def from_template(
    name: str,
    values: Mapping[str, Any] | None = None,
    *,
    request: Any = None,
    package: ModuleType | None = None,
    locale: str | None = None,
    inline_css: bool | None = None,
    **kw: Any,
) -> TemplatedMessage:
    """A :class:`TemplatedMessage` rendered from the template ``name``.

    ``values`` go to the templates, with ``request`` (default: the current
    request, else a blank one on the current registry, as in a script run
    by :func:`pyramid.paster.bootstrap`). ``locale`` renders in that locale
    instead of the request's. ``inline_css`` None follows ``mail.inline_css``
    (on when pyramid_txmail is not configured). The other keywords are the
    :class:`~pyramid_txmail.Message`'s (``recipients``, ``sender``, ``cc``,
    ``attachments``, ...); a ``subject`` given replaces the subject
    template, which may then be missing. Raises
    :class:`~pyramid_txmail.MailError` naming the template when it cannot
    be rendered.
    """
    for key in ('body', 'html'):
        if key in kw:
            raise TypeError(f'{key} is rendered from the template; do not pass it')
    if package is None:
        package = caller_package()
    if request is None:
        request = get_current_request() or _blank_request()
    if inline_css is None:
        settings = request.registry.queryUtility(IMailSettings)
        inline_css = settings.inline_css if settings is not None else True
    rendered = render_mail(
        name,
        values,
        request=request,
        package=package,
        locale=locale,
        inline_css=bool(inline_css),
        need_subject=kw.get('subject') is None,
    )
    if kw.get('subject') is None:
        kw['subject'] = rendered.subject
    return TemplatedMessage(
        body=rendered.body,
        html=rendered.html,
        template=name,
        template_values={} if values is None else dict(values),
        locale=locale,
        **kw,
    )
