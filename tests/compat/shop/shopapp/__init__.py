"""A small shop that sends mail the way pyramid_mailer's documentation teaches."""

from pyramid.config import Configurator


def main(global_config, **settings):
    """The WSGI application (``pserve development.ini``)."""
    with Configurator(settings=settings) as config:
        config.include('pyramid_tm')
        config.add_route('order', '/order')
        config.add_route('contact', '/contact')
        config.add_route('newsletter', '/newsletter')
        config.add_route('gift', '/gift')
        config.scan('.views')
    return config.make_wsgi_app()
