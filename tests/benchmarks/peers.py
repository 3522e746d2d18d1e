"""The peers' side of the benchmark, run with the peers' own Python.

``python peers.py FIGURE N PORT WORKDIR`` prints the seconds taken as JSON.
Figures: pm_queue (pyramid_mailer send_to_queue + commit), rs_drain
(repoze.sendmail's QueueProcessor), pm_direct (pyramid_mailer send + commit),
zs_queue (zope.sendmail's QueuedMailDelivery, send + commit), zs_direct
(zope.sendmail's DirectMailDelivery over its SMTPMailer, send + commit) and
zs_drain (zope.sendmail's QueueProcessorThread, one pass). zope.sendmail
takes bytes: it is given the bytes pyramid_mailer builds for the same
message, or with ``_email`` (zs_queue_email, zs_direct_email) the bytes of a
stdlib ``EmailMessage`` built as bench.py's ``email_message()`` builds it.
"""

import json
import os
import sys
import time
from email.message import EmailMessage

import transaction
from pyramid_mailer.mailer import Mailer
from pyramid_mailer.message import Message


def message():
    return Message(
        subject='Your order has shipped',
        sender='shop@example.com',
        recipients=['customer@example.com'],
        body='Hello,\n\n' + 'Your order is on its way. ' * 30,
        html='<p>Hello,</p><p>' + 'Your order is on its way. ' * 30 + '</p>',
    )


def email_message():
    """The same message as a stdlib EmailMessage (as bench.email_message)."""
    msg = EmailMessage()
    msg['Subject'] = 'Your order has shipped'
    msg['From'] = 'shop@example.com'
    msg['To'] = 'customer@example.com'
    msg.set_content('Hello,\n\n' + 'Your order is on its way. ' * 30)
    msg.add_alternative(
        '<p>Hello,</p><p>' + 'Your order is on its way. ' * 30 + '</p>',
        subtype='html',
    )
    return msg


def zope_input(email):
    """(sender, recipients, bytes) for zope.sendmail, built per message."""
    if email:
        msg = email_message()
        return msg['From'], [msg['To']], msg.as_bytes()
    msg = message()
    return msg.sender, msg.recipients, msg.to_message().as_string().encode()


def main():
    figure, n, port, workdir = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )
    queue = os.path.join(workdir, 'pm-queue')
    mailer = Mailer(host='127.0.0.1', port=port, queue_path=queue)
    start = time.perf_counter()
    if figure == 'pm_queue':
        for _ in range(n):
            mailer.send_to_queue(message())
            transaction.commit()
    elif figure == 'pm_direct':
        for _ in range(n):
            mailer.send(message())
            transaction.commit()
    elif figure == 'rs_drain':
        from repoze.sendmail.mailer import SMTPMailer
        from repoze.sendmail.queue import QueueProcessor

        for _ in range(n):  # fill first, outside the timing
            mailer.send_to_queue(message())
            transaction.commit()
        start = time.perf_counter()
        QueueProcessor(SMTPMailer('127.0.0.1', port), queue).send_messages()
    elif figure in ('zs_direct', 'zs_direct_email'):
        from zope.sendmail.delivery import DirectMailDelivery
        from zope.sendmail.mailer import SMTPMailer

        delivery = DirectMailDelivery(SMTPMailer('127.0.0.1', port))
        for _ in range(n):
            delivery.send(*zope_input(figure.endswith('_email')))
            transaction.commit()
    elif figure in ('zs_queue', 'zs_queue_email', 'zs_drain'):
        from zope.sendmail.delivery import QueuedMailDelivery

        delivery = QueuedMailDelivery(os.path.join(workdir, 'zs-queue'))
        for _ in range(n):
            delivery.send(*zope_input(figure.endswith('_email')))
            transaction.commit()
        if figure == 'zs_drain':
            from zope.sendmail.mailer import SMTPMailer
            from zope.sendmail.queue import QueueProcessorThread

            processor = QueueProcessorThread()
            processor.setQueuePath(delivery.queuePath)
            processor.setMailer(SMTPMailer('127.0.0.1', port))
            start = time.perf_counter()
            processor.run(forever=False)  # one pass, in this thread
            left = os.listdir(os.path.join(delivery.queuePath, 'new'))
            if left:
                raise SystemExit(f'zope.sendmail left {len(left)} messages')
    else:
        raise SystemExit(f'unknown figure {figure!r}')
    print(json.dumps({'seconds': time.perf_counter() - start}))


if __name__ == '__main__':
    main()
