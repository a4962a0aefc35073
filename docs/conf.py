"""Sphinx configuration for the fastai-sem documentation site.

The sources are not in this folder: `tools/build_docs.py` turns the nbdev notebooks
(nbs/, processed by `nbdev.serve.proc_nbs`) into plain notebooks under `_build/`
and runs Sphinx on them with this folder as the configuration directory (`-c docs`).
Everything the pages load is local (no CDN): furo, myst-nb's CSS, Sphinx search and a
vendored MathJax 3 (`_static/mathjax`, Apache-2.0), so the site works offline and from file://.
"""
import re, sys, tomllib
from pathlib import Path

HERE = Path(__file__).absolute().parent
sys.path.insert(0, str(HERE / '_ext'))

_proj = tomllib.loads((HERE.parent / 'pyproject.toml').read_text(encoding='utf-8'))['project']
_init = HERE.parent / _proj['name'].replace('-', '_') / '__init__.py'
_ver = re.search(r'''^__version__\s*=\s*['"]([^'"]+)''', _init.read_text(encoding='utf-8'), re.M) if _init.exists() else None

project = _proj['name']
author = ', '.join(a['name'] for a in _proj.get('authors', [])) or project
copyright = f'%Y, {author}'
release = version = _ver.group(1) if _ver else ''
language = 'en'

root_doc = 'index'
extensions = ['myst_nb', 'semdocs']
exclude_patterns = ['**/.ipynb_checkpoints', '**.md', '**.qmd', '**.rst', '**.txt']

# ---- myst-nb: render the stored outputs, never run a kernel --------------------------
nb_execution_mode = 'off'
nb_merge_streams = True
nb_render_markdown_format = 'myst'
nb_ipywidgets_js = {}                      # the default pulls require.js and widgets from CDNs
nb_number_source_lines = False

myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'attrs_inline', 'attrs_block',
                          'deflist', 'html_image', 'tasklist']
myst_heading_anchors = 6
myst_heading_slug_func = 'semdocs.pandoc_slug'   # nbdev/Quarto anchors: mixers.html#mix_images
suppress_warnings = ['myst.header']         # show_doc uses ### headings straight under the page title

# ---- HTML ----------------------------------------------------------------------------
html_theme = 'furo'
html_title = project
html_short_title = project
html_static_path = ['_static']
html_favicon = '_static/favicon.svg'         # also keeps browsers from asking for /favicon.ico
html_css_files = ['custom.css']
html_js_files = ['file-protocol.js']
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    'navigation_with_keys': True,
    'top_of_page_buttons': [],               # those link to a source repository we do not configure
}

# MathJax 3 from _static (the Sphinx default is a CDN). No context menu: its optional
# accessibility explorer would fetch the speech engine from a CDN.
mathjax_path = 'mathjax/tex-svg-full.js'
mathjax3_config = {'options': {'enableMenu': False}, 'svg': {'fontCache': 'global'}}
