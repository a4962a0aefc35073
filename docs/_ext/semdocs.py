"""Small Sphinx helpers for the fastai-sem docs (loaded by docs/conf.py).

`pandoc_slug` makes heading anchors the way Quarto/pandoc (and therefore nbdev's
doc links, e.g. `callback.html#semmixup.before_batch`) spell them; myst-parser
emits them as extra HTML ids and resolves `page.ipynb#slug` links with them.
`tools/build_docs.py` imports it too, so both sides agree on every anchor.
"""
import re

_re_drop = re.compile(r'[^\w\s.\-]')
_re_lead = re.compile(r'^[\W\d_]+')


def pandoc_slug(title: str) -> str:
    "Pandoc's auto identifier: keep letters, digits, `_`, `-`, `.`; spaces to `-`; lowercase; start at a letter"
    s = _re_drop.sub('', title.strip().lower())
    s = re.sub(r'\s', '-', s)
    return _re_lead.sub('', s)


def setup(app):
    return {'version': '1.0', 'parallel_read_safe': True, 'parallel_write_safe': True}
