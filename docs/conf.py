"""Sphinx configuration for pyramid_txmail (built offline, warnings as errors)."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'pyramid_txmail'
author = 'the pyramid_txmail developers'
copyright = '2026, ' + author
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.viewcode']
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
exclude_patterns = ['_build']
nitpicky = False

try:
    import pylons_sphinx_themes

    html_theme_path = pylons_sphinx_themes.get_html_themes_path()
    html_theme = 'pyramid'
    html_theme_options = {'github_url': ''}
except ImportError:  # pragma: no cover
    html_theme = 'alabaster'
