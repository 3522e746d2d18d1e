"""``remind CONFIG EMAIL...``: a cron job mailing a reminder to each address.

It builds its own mailer from the .ini file's settings, outside any request,
and commits all the reminders in one transaction.
"""

import sys

import transaction
from pyramid.paster import get_appsettings
from pyramid_mailer.mailer import Mailer
from pyramid_mailer.message import Message


def main(argv=sys.argv):
    config_uri, emails = argv[1], argv[2:]
    mailer = Mailer.from_settings(get_appsettings(config_uri))
    with transaction.manager:
        for email in emails:
            mailer.send(
                Message(
                    subject='Your basket is waiting',
                    recipients=[email],
                    body='You left something in your basket.',
                )
            )
