"""tests/compat holds an application of its own (``shop/``), tested by
tests/test_compat.py in separate processes: once against pyramid_mailer in
tests/compat/.venv, once renamed against pyramid_txmail. Its tests import
pyramid_mailer, so this test suite does not collect them itself.
"""

collect_ignore = ['shop']
