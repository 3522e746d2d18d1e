"""The peers' side of the benchmark, run with the peers' own Python.

``python peers.py FIGURE N PORT WORKDIR`` prints the seconds taken as JSON.
Figures: pm_queue (pyramid_mailer send_to_queue + commit), rs_drain
(repoze.sendmail's QueueProcessor), pm_direct (pyramid_mailer send + commit),
zs_queue (zope.sendmail's QueuedMailDelivery, send + commit) and zs_drain
(zope.sendmail's QueueProcessorThread, one pass). zope.sendmail is given the
bytes pyramid_mailer builds for the same message.
"""

import json
import os
import sys
import time

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
    elif figure in ('zs_queue', 'zs_drain'):
        from zope.sendmail.delivery import QueuedMailDelivery

        delivery = QueuedMailDelivery(os.path.join(workdir, 'zs-queue'))
        for _ in range(n):
            msg = message()
            delivery.send(
                msg.sender, msg.recipients, msg.to_message().as_string().encode()
            )
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
