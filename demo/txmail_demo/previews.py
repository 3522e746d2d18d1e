"""Mail previews for the demo (``/_mail/``): each function returns a
template name and sample values; nothing is sent."""

from __future__ import annotations

from typing import Any


def welcome(request: Any) -> tuple[str, dict[str, Any]]:
    """The welcome mail a new user receives."""
    return 'txmail_demo:templates/welcome.jinja2', {
        'name': 'Ada',
        'link': request.application_url + '/',
    }
