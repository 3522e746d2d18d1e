"""Preview functions for tests/test_templates.py (config.add_mail_previews)."""

from os.path import join  # noqa: F401 - an imported function is no preview


def welcome(request):
    """The sign-up mail."""
    return (
        'tests:templates/welcome.jinja2',
        {'name': 'Ann', 'email': 'ann@example.com', 'link': request.route_url('home')},
    )


def receipt():
    return (
        'templates/receipt.jinja2',
        {'item': 'Tom & Jerry', 'price': '3 €'},
        {'recipients': ['bob@example.com'], 'locale': 'de'},
    )


def notice():
    return 'tests:templates/notice.jinja2', {'headline': 'Hi', 'text': 'Only text.'}


def broken():
    return 'tests:templates/broken.jinja2', {}


def bad_address():
    return (
        'tests:templates/notice.jinja2',
        {'headline': 'Hi', 'text': 'x'},
        {'recipients': ['not an address']},
    )


def _helper():  # pragma: no cover - private functions are no previews
    return 'tests:templates/receipt.jinja2', {}
