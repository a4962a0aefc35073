#!/usr/bin/env python
"""Build the fastai-sem documentation site (and README.md) offline, without Quarto.

    python tools/build_docs.py [--out _build/html]    # the HTML site
    python tools/build_docs.py --readme               # README.md from nbs/index.ipynb

Pipeline:
1. `nbdev.serve.proc_nbs` processes nbs/ into `_proc/` as for nbdev's Quarto site: show_doc
   cells are added and run, `#| hide`/export cells dropped, symbols linked (one change: of a cell
   mixing imports and other code only the imports and definitions run, see `_filter_defaults`).
2. Each processed notebook becomes a plain notebook for myst-nb under `_build/src/`:
   the Quarto front matter becomes a `# Title` heading plus description, `#| echo/output/include`
   become the cell tags remove-input/remove-output/remove-cell (directive lines removed),
   show_doc output becomes markdown cells (real headings: in the page TOC and the search index),
   links to our own pages become relative links Sphinx checks. Pages are named like nbdev's
   (00_mixers.ipynb -> mixers.html), so doc links and anchors stay the same as on an nbdev site.
3. Sphinx + myst-nb (stored outputs, no execution) + furo, with -W --keep-going, config in docs/.
"""
import argparse, copy, functools, json, os, posixpath, re, shutil, subprocess, sys, time, urllib.parse, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {'': 'API reference', 'tutorials': 'Tutorials', 'benchmarks': 'Benchmarks & results'}
SECTION_ORDER = ['', 'tutorials', 'benchmarks']
REPO_ASSETS = '_repo'          # copies of repository files (LICENSE, scripts) that pages link to
SOURCE_PAGES = '_modules'      # the library's source files as highlighted pages, targets of the 'source' links
ASSET_SKIP = {'.ipynb', '.md', '.qmd', '.rst', '.txt', '.py', '.yml', '.yaml', '.toml', '.pyc'}

# ---------------------------------------------------------------------------------------
# 1. nbdev processing

def _config(root):
    from nbdev.config import get_config
    return get_config(str(root))


def nbdev_proc(root=ROOT, force=False, file_glob='', isolated=True):
    """Run nbdev's docs processing (`proc_nbs`) on `root`/nbs; return the `_proc` folder it fills.
    It runs the notebooks' exported code and imports (for show_doc): with `isolated` in a child
    process, so that none of it touches the caller (e.g. a pytest session). There the notebooks are
    processed one after the other in one process (proc_nbs' `n_workers=0`): imports are paid once,
    and DataLoaders keep fork-started workers (in proc_nbs' spawned workers, each DataLoader
    worker would start a fresh interpreter)."""
    root = Path(root).resolve()
    if isolated:
        cmd = [sys.executable, str(Path(__file__).resolve()), '--root', str(root), '--nbdev-only']
        if force: cmd.append('--force')
        if file_glob: cmd += ['--file-glob', file_glob]
        r = subprocess.run(cmd)
        if r.returncode: raise SystemExit(f"nbdev's notebook processing failed (exit {r.returncode}): see above")
        return Path(_config(root).config_path) / '_proc'
    # notebooks import the library: use this checkout's copy, whatever is pip-installed
    if str(root) not in sys.path: sys.path.insert(0, str(root))
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH')]))
    import nbdev.serve
    from fastcore.xtras import working_directory
    cfg = _config(root)
    orig, nbdev.serve.FilterDefaults = nbdev.serve.FilterDefaults, _filter_defaults()
    try:
        with working_directory(root), warnings.catch_warnings():
            # such cells only get their imports run here (see `_filter_defaults`)
            warnings.filterwarnings('ignore', message='Found cells containing imports and other code')
            return Path(nbdev.serve.proc_nbs(path=str(cfg.nbs_path), n_workers=0, force=force, file_glob=file_glob))
    finally: nbdev.serve.FilterDefaults = orig


def _filter_defaults():
    """nbdev's docs processors, but cells that mix imports with other code only get their imports
    and definitions run: nbdev runs such cells whole for show_doc (its FAQ: "Found cells containing
    imports and other code"), which would re-train every model a notebook trains in such a cell,
    fail on names from cells it does not run, and replace the outputs stored in the notebook"""
    import ast
    from nbdev import processors as P

    class exec_show_docs(P.exec_show_docs):                               # same name: `skip_procs` still applies
        def __call__(self, cell):
            if not (getattr(self.nb, 'has_docs_', None) and hasattr(self, 'k')) or not P._do_eval(cell): return
            trees = cell.parsed_() or []
            if cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'} or P._show_docs(trees) \
               or not P._tl_contains(trees, (ast.Import, ast.ImportFrom)): return super().__call__(cell)
            keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if all(isinstance(t, keep) for t in trees): return super().__call__(cell)
            fm = getattr(self.nb, 'frontmatter_', {})
            if P.str2bool(fm.get('skip_showdoc', False)): return
            self.k.run('\n'.join(ast.unparse(t) for t in trees if isinstance(t, keep)))
            if (e := self.k.exc):
                raise Exception(f"Error in notebook {fm.get('title', '')!r} in cell {cell.idx_} (its imports/definitions):\n"
                                f"{cell.source}\n{type(e).__name__}: {e}") from e

    class FilterDefaults(P.FilterDefaults):
        def base_procs(self): return [exec_show_docs if p is P.exec_show_docs else p for p in super().base_procs()]
    return FilterDefaults


def _iter_nbs(path):
    "Notebooks under `path` as nbdev sees them (no `_`/`.`-prefixed files or folders)"
    for p in sorted(Path(path).rglob('*.ipynb')):
        rel = p.relative_to(path)
        if any(o[0] in '_.' for o in rel.parts): continue
        yield p

# ---------------------------------------------------------------------------------------
# 2. processed notebook -> plain myst-nb notebook

_re_dir = re.compile(r'^\s*#\s*\|\s*(.*?)\s*$')
_re_link = re.compile(r'(?P<bang>!?)\[(?P<text>(?:[^\[\]]|\[[^\[\]]*\])*)\]\((?P<url><[^>]*>|[^)\s]+)(?P<title>\s+"[^"]*")?\)')
_re_scheme = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')
_re_heading = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')
_re_fm = re.compile(r'^\s*---\s*\n(.*?)\n---\s*$', re.S)


def _src(cell): return ''.join(cell.get('source', '')) if isinstance(cell.get('source'), list) else cell.get('source', '')


def _txt(v): return ''.join(v) if isinstance(v, list) else (v or '')


def split_directives(src):
    "Remove every `#|` line from code `src`; return (code, {directive: value})"
    d, keep = {}, []
    for line in src.splitlines():
        m = _re_dir.match(line)
        if m:
            k, _, v = m.group(1).partition(':')
            d[k.strip()] = v.strip().strip('"\'') if _ else ''
        else: keep.append(line)
    return '\n'.join(keep).strip('\n'), d


def front_matter(nb):
    "The YAML front matter of a processed notebook (nbdev puts it in a first raw cell), and the cell"
    import yaml
    for c in nb['cells']:
        if c['cell_type'] == 'raw':
            m = _re_fm.match(_src(c))
            if m:
                try: return (yaml.safe_load(m.group(1)) or {}), c
                except yaml.YAMLError: pass
    return {}, None


def _heading_text(t):
    t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', t)                       # links -> their text
    return re.sub(r'[`*]', '', t)


def md_lines(md):
    "Lines of markdown `md` with a flag: is the line inside a fenced code block?"
    fence = None
    for line in md.splitlines():
        s = line.lstrip()
        m = re.match(r'(`{3,}|~{3,})', s)
        if m and (fence is None or s.startswith(fence)):
            yield line, True
            fence = None if fence else m.group(1)
            continue
        yield line, fence is not None


def heading_slugs(md):
    from semdocs import pandoc_slug
    return {pandoc_slug(_heading_text(m.group(2))) for line, code in md_lines(md) if not code
            for m in [_re_heading.match(line)] if m}


class Site:
    "Pages of the site: source notebook path <-> page name (nbdev's html names) and their anchors"
    def __init__(self, proc_dir, cfg):
        from nbdev.config import nbpath2html
        self.proc_dir, self.cfg = Path(proc_dir), cfg
        self.doc_base = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/' if cfg.get('doc_host') else None
        self.pages = {}                                                   # src rel (posix) -> docname
        self.nbs = {}                                                     # src rel -> processed notebook
        taken = set()
        nbs_path = Path(cfg.nbs_path)
        for p in _iter_nbs(nbs_path):                                     # the notebooks in nbs/, not stale _proc files
            rel = p.relative_to(nbs_path).as_posix()
            doc = posixpath.join(posixpath.dirname(rel), nbpath2html(Path(rel)).stem)   # nbdev's page name
            if doc in taken: doc = rel[:-len('.ipynb')]                   # two notebooks -> same html name
            taken.add(doc)
            self.pages[rel] = doc
            if (self.proc_dir / rel).exists(): self.nbs[rel] = json.loads((self.proc_dir / rel).read_text(encoding='utf-8'))
        self.by_html = {d + '.html': d for d in self.pages.values()}
        self.root, self.nbs_path = Path(cfg.config_path).resolve(), nbs_path.resolve()
        git = (cfg.get('git_url') or '').rstrip('/')
        self.git_base = f"{git}/blob/{cfg.get('branch', 'main')}/" if git else None
        self.anchors = {}
        self.lookup = own_lookup(cfg)
        self.repo_assets = set()                                          # files outside nbs/ the pages link to

    def resolve(self, url, from_rel):
        "Page and anchor that `url`, written in notebook `from_rel`, points to on this site (or None)"
        url = url.strip('<>')
        if self.doc_base and url.startswith(self.doc_base): path, rel_to = url[len(self.doc_base):], ''
        elif self.doc_base and url.rstrip('/') + '/' == self.doc_base: path, rel_to = '', ''
        elif not self.doc_base and re.match(r'^/[^/]', url) and not url.startswith('/blob/'):
            path, rel_to = url[1:], ''                                    # nbdev without a doc_host: /cli.html#x
        elif _re_scheme.match(url) or url.startswith(('#', '/')): return None
        else: path, rel_to = url, posixpath.dirname(from_rel)
        path, _, frag = path.partition('#')
        path = path.split('?')[0]
        if path in ('', 'index.html') and not rel_to: return 'index', frag
        if not path: return None
        path = posixpath.normpath(posixpath.join(rel_to, path))
        stem, ext = posixpath.splitext(path)
        if ext == '.md' and stem.endswith('.html'): stem, ext = stem[:-5], '.html'   # nbdev's llms links
        if ext in ('.ipynb', '.md', '.qmd'):
            doc = self.pages.get(stem + '.ipynb') or self.by_html.get(stem + '.html')
        elif ext == '.html': doc = self.by_html.get(path) or self.pages.get(stem + '.ipynb')
        else: return None
        return (doc, frag) if doc else None

    def repo_file(self, url, from_rel):
        "For a relative link to an existing file of the repository: (its path from the root, is it under nbs/?)"
        url = url.strip('<>').split('#')[0].split('?')[0]
        if not url or _re_scheme.match(url) or url.startswith('/'): return None
        p = (self.nbs_path / posixpath.dirname(from_rel) / urllib.parse.unquote(url)).resolve()
        if not p.exists() or not p.is_relative_to(self.root): return None
        return p.relative_to(self.root).as_posix(), p.is_relative_to(self.nbs_path)


def own_lookup(cfg):
    """An `NbdevLookup` for this library's symbols from its `_modidx.py`, used only when nbdev's own
    linking did not link them by their short names: nbdev reads installed entry points (none if the
    package is not pip-installed) and strips only `strip_libs` (default `lib_name`, here
    'fastai-sem', while the entry point is 'fastai_sem')"""
    from importlib.metadata import entry_points
    from nbdev.doclinks import NbdevLookup, _qual_syms
    idx = Path(cfg.lib_path) / '_modidx.py'
    if not idx.exists(): return None
    g = {}
    exec(idx.read_text(encoding='utf-8'), g)
    d = _qual_syms(g['d'])
    syms = {}
    for mod, dets in d['syms'].items():
        for k, v in dets.items():
            syms[k] = v
            syms.setdefault(k[len(mod) + 1:] if k.startswith(mod + '.') else k, v)
    # nbdev (in `_proc`) linked the short names already if it strips this library's entry point
    # (checked without loading the entry points, which would import the library and torch)
    strip = cfg.get('strip_libs') or cfg.lib_name
    strip = strip.split() if isinstance(strip, str) else list(strip)
    lib = Path(cfg.lib_path).name
    if lib in strip and any(ep.name == lib for ep in entry_points(group='nbdev')): return None

    class _Lookup(NbdevLookup):
        _re = re.compile(r'(?<!\[)`([^`\s]+?)(?:\(\))?`(?!\]\()')          # skip symbols already linked
        def __init__(self): self.entries, self.syms, self.aliases = {}, syms, {}
        def link_line(self, l): return self._re.sub(self._link_sym, l)
        def code(self, sym):                                                # line numbers from this checkout's files
            res = self[sym]
            if not isinstance(res, tuple): return None
            d = _def_lines(root / res[1])
            line = d.get(sym) or next((v for k, v in d.items() if sym.endswith('.' + k)), None)
            return f'{res[2]}#L{line}' if line else res[2]
    root = Path(cfg.config_path)
    return _Lookup()


@functools.lru_cache(None)
def _def_lines(path):
    "Line of each top-level function/class (and `Class.method`) defined in the Python file `path`"
    import ast
    from nbdev.doclinks import patch_name
    try: tree = ast.parse(Path(path).read_text(encoding='utf-8'))
    except (OSError, SyntaxError): return {}
    d, defs = {}, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for t in tree.body:
        if isinstance(t, defs):
            for n in ([patch_name(t)] if isinstance(patch_name(t), str) else patch_name(t)): d[n] = t.lineno
        if isinstance(t, ast.ClassDef): d.update({f'{t.name}.{t2.name}': t2.lineno for t2 in t.body if isinstance(t2, defs)})
    return d


def fix_links(md, site, from_rel, mode='site', missing=None):
    """Links in markdown `md` (of notebook `from_rel`): to our own pages, relative `x.ipynb#anchor`
    links (checked by Sphinx) for the site and absolute doc URLs for the README; to files of the
    repository outside nbs/, links to them on GitHub; for the README, other files under nbs/ by
    their path from the repository root"""
    from_doc = site.pages.get(from_rel, from_rel)

    def sub(m):
        text, url0, title = m.group('text'), m.group('url'), m.group('title') or ''
        if not m.group('bang'): text = re.sub(r'\[([^\[\]]*)\]\([^)\s]*\)', r'\1', text)   # a link inside a link's text (nbdev linking a symbol there)
        r = None if m.group('bang') else site.resolve(url0, from_rel)
        if r is None:
            f = site.repo_file(url0, from_rel)
            if f is None: return m.group(0)
            rel, inside = f
            if inside and mode == 'site': return m.group(0)                 # an asset next to the pages
            if mode == 'readme': url = rel                                  # README sits at the root
            else:                                                           # a copy in the site, as a download
                site.repo_assets.add(rel)
                url = posixpath.relpath(f'{REPO_ASSETS}/{rel}', posixpath.dirname(from_doc) or '.')
            return f"{m.group('bang')}[{text}]({url}{title})"
        doc, frag = r
        if frag and mode == 'site' and frag not in site.anchors.get(doc, ()):
            if re.fullmatch(r'`[^`]+`', text) and frag == text.strip('`').removesuffix('()').lower():
                return text                                                 # a symbol link to a private/undocumented name
            if missing is not None: missing.append(f'{from_rel}: {url0} (no #{frag} on {doc})')
            frag = ''
        if mode == 'readme':                                                # the notebook, in the repository
            src = next((r for r, d in site.pages.items() if d == doc), None)
            if src is None: return text
            url = site.nbs_path.relative_to(site.root).as_posix() + '/' + src
            return f"[{text}]({url}{title})"
        else: url = posixpath.relpath(doc, posixpath.dirname(from_doc) or '.') + '.ipynb'
        return f"[{text}]({url}{'#' + frag if frag else ''}{title})"

    out = []
    for line, code in md_lines(md): out.append(line if code else _re_link.sub(sub, line))
    return '\n'.join(out)


def showdoc_md(md, lookup=None, site=None, from_doc=''):
    """show_doc's markdown as page markdown, as on docs.fast.ai: the heading (class `sem-doc`; the leading rule is
    CSS), a 'source' link to the symbol's line in this repository's file (a highlighted copy in the site, see
    `source_pages`), the signature as wrapping text, the docstring and a table of the parameters (name, type, default,
    description from the docments) instead of nbdev's signature code block, which scrolls sideways when long"""
    md = re.sub(r'^\s*---\s*\n', '', md).strip('\n')
    nb_src = None
    m = re.match(r'^\[source\]\(([^)\s]*)\)(\{[^}]*\})?\s*\n', md)                 # nbdev's [source](url){...}
    if m: nb_src, md = m.group(1), md[m.end():].lstrip('\n')
    h = _re_heading.match(md.splitlines()[0]) if md else None
    if not h: return md
    name = h.group(2).strip('`')
    if not nb_src and lookup is not None:
        try: nb_src = lookup.code(name)
        except Exception: nb_src = None
    link = ''
    loc = re.search(r'(?P<path>[\w./-]+\.py)#L(?P<line>\d+)', nb_src or '')
    lib = Path(site.cfg.lib_path).name if site is not None else None
    if loc and lib and f'{lib}/' in loc.group('path'):
        path = loc.group('path')[loc.group('path').index(f'{lib}/'):]
        href = posixpath.relpath(f'{SOURCE_PAGES}/{path[:-3]}.html', posixpath.dirname(from_doc) or '.')
        link = f'<a class="sem-source-link reference external" href="{href}#L-{loc.group("line")}">source</a>\n\n'
    first, _, rest = md.partition('\n')
    return f'{{.sem-doc}}\n{first}\n\n{link}{signature_md(rest.lstrip(chr(10)))}'


def _md_cell(s): return str(s).replace('|', '\\|').replace('\n', ' ').strip()
def _code(s): return f'`{_md_cell(s)}`' if str(s).strip() else ''


def parse_signature(sig):
    """(name, params, returns) of nbdev's signature block `sig` (`def f(\n  a:int=1, # doc\n)->T: # doc`):
    params are dicts of name, type, default, doc (the docments comment), `returns` one or None; None if unparsable"""
    import ast, io, tokenize
    src = re.sub(r'^(\s*)class\s', r'\1def ', sig.strip('\n'), count=1)
    try: fn = ast.parse(src.rstrip() + '\n    pass').body[0]
    except SyntaxError: return None
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): return None
    comments = {}
    try:
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type == tokenize.COMMENT: comments[t.start[0]] = t.string.lstrip('#').strip()
    except (tokenize.TokenError, IndentationError): pass
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    items = [(x, d, '') for x, d in zip(pos, defaults)]
    if a.vararg: items.append((a.vararg, None, '*'))
    items += [(x, d, '') for x, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg: items.append((a.kwarg, None, '**'))
    ends = [max(n.end_lineno for n in (x, x.annotation, d) if n is not None) for x, d, _ in items]
    params = []
    for i, ((x, d, star), end) in enumerate(zip(items, ends)):
        last_on_line = i == len(items) - 1 or ends[i + 1] != end
        params.append(dict(name=star + x.arg, type=ast.unparse(x.annotation) if x.annotation else '',
                           default=ast.unparse(d) if d is not None else '',
                           doc=comments.get(end, '') if last_on_line else ''))
    if params and params[0]['name'] in ('self', 'cls') and not params[0]['type']: params = params[1:]
    ret = None
    if fn.returns is not None:
        ret = dict(type=ast.unparse(fn.returns), doc=comments.get(fn.returns.end_lineno, ''))
        if ret['type'] == 'None' and not ret['doc']: ret = None
    return fn.name, params, ret


def signature_md(md):
    "nbdev's signature code block at the start of `md` as a wrapping signature line and a parameter table"
    m = re.match(r'\s*```python\n(.*?)\n```[ \t]*\n?', md, re.S)
    if not m: return md
    parsed = parse_signature(m.group(1))
    if parsed is None: return md
    name, params, ret = parsed
    args = ', '.join(p['name'] + (f":{p['type']}" if p['type'] else '') + (f"={p['default']}" if p['default'] else '') for p in params)
    out = f'{{.sem-signature}}\n`{name}({args})`' + (f" → `{ret['type']}`" if ret else '') + '\n'
    rest = md[m.end():].strip('\n')
    if rest: out += '\n' + rest + '\n'
    described = [p for p in params if not (p['name'].startswith('*') and not p['doc'])]
    if described or (ret and ret['doc']):
        rows = ['| Parameter | Type | Default | Description |', '|---|---|---|---|']
        for p in described:
            rows.append(f"| `{p['name']}` | {_code(p['type'])} | {_code(p['default'])} | {_md_cell(p['doc'])} |")
        if ret: rows.append(f"| **Returns** | {_code(ret['type'])} | | {_md_cell(ret['doc'])} |")
        out += '\n{.sem-params}\n' + '\n'.join(rows) + '\n'
    return out


def tidy_dataframe_html(html):
    """A pandas DataFrame's HTML as a table that fits a page: without the header row that only holds the index name
    (pandas writes it on a row of its own, an empty-looking row above the data; the name moves to the corner cell),
    without an index of bare row numbers, numbers kept on one line and long labels breakable"""
    def fix(m):
        table = m.group(0)
        head = re.search(r'<thead>(.*?)</thead>', table, re.S)
        if not head: return table
        rows = re.findall(r'<tr[^>]*>.*?</tr>', head.group(1), re.S)
        if len(rows) < 2: return table
        cells = re.findall(r'<th[^>]*>(.*?)</th>', rows[-1], re.S)
        if not cells or not cells[0].strip() or any(c.strip() for c in cells[1:]): return table
        corner = re.match(r'(\s*<tr[^>]*>\s*<th(?![^>]*colspan)[^>]*>)(.*?)(</th>)', rows[-2], re.S)
        if not corner: return table
        name = cells[0].strip() if not corner.group(2).strip() else f'{cells[0].strip()} \\ {corner.group(2).strip()}'
        row = corner.group(1) + name + corner.group(3) + rows[-2][corner.end():]
        return table.replace(head.group(1), head.group(1).replace(rows[-2], row).replace(rows[-1], ''))
    def drop_range_index(table):
        "Without the index column when it is unnamed row numbers (pandas' default index, or what is left of it)"
        body = re.search(r'<tbody>(.*?)</tbody>', table, re.S)
        if not body: return table
        labels = re.findall(r'<tr[^>]*>\s*<th[^>]*>(.*?)</th>', body.group(1), re.S)
        rows = re.findall(r'<tr', body.group(1))
        if not labels or len(labels) != len(rows) or not all(re.fullmatch(r'\d+', l.strip()) for l in labels): return table
        head = re.search(r'<thead>(.*?)</thead>', table, re.S)
        corners = re.findall(r'<tr[^>]*>\s*<th[^>]*>(.*?)</th>', head.group(1), re.S) if head else []
        if not corners or any(c.strip() for c in corners) or 'rowspan' in head.group(1) or 'colspan' in head.group(1): return table
        return re.sub(r'(<tr[^>]*>)\s*<th[^>]*>.*?</th>', r'\1', table, flags=re.S)
    def text_cells(table):
        """Numbers stay on one line (class `sem-num` on cells without words); cells of several numbers joined by
        ' · ' may break between them, never inside one; words may wrap"""
        table = re.sub(r'<td>([^<A-Za-z]*|NaN|None|True|False)</td>', r'<td class="sem-num">\1</td>', table)
        return re.sub(r'<td class="sem-num">([^<]* · [^<]*)</td>', lambda t: '<td>' + ' · '.join(
            f'<span class="sem-nowrap">{v}</span>' for v in t.group(1).split(' · ')) + '</td>', table)
    def wide(table):
        "Class `sem-wide` (smaller type) on tables of more than 12 columns"
        head = re.search(r'<thead>.*?<tr[^>]*>(.*?)</tr>', table, re.S)
        n = len(re.findall(r'<th', head.group(1))) if head else 0
        return re.sub(r'class="dataframe', 'class="dataframe sem-wide', table, count=1) if n > 12 else table
    def breakable(table):
        "Labels and words may break after `_` and `+` (auroc_mnist_energy, SEM+MixUp), not inside words"
        return re.sub(r'(<t[hd]>)([^<]*)(</t[hd]>)', lambda t: t.group(1) + re.sub(r'([_+])(?=\w)', r'\1<wbr>', t.group(2)) + t.group(3), table)
    return re.sub(r'<table[^>]*class="dataframe[^"]*"[^>]*>.*?</table>', lambda m: wide(breakable(text_cells(drop_range_index(fix(m))))),
                  html, flags=re.S)


def source_pages(root, cfg, dest):
    """The library's Python files as highlighted HTML pages under `dest` (`_modules/<lib>/<module>.html`, line `n`
    at `#L-n`), so that the API pages' 'source' links open this repository's own files, offline"""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    lib = Path(cfg.lib_path)
    fmt = HtmlFormatter(linenos='table', lineanchors='L', anchorlinenos=True, cssclass='highlight')
    css = fmt.get_style_defs('.highlight')
    for py in sorted(lib.rglob('*.py')):
        rel = py.relative_to(lib.parent).as_posix()
        if py.name.startswith('_') and py.name != '__init__.py': continue
        out = Path(dest) / SOURCE_PAGES / (rel[:-3] + '.html')
        out.parent.mkdir(parents=True, exist_ok=True)
        home = posixpath.relpath('index.html', posixpath.dirname(f'{SOURCE_PAGES}/{rel}'))
        body = highlight(py.read_text(encoding='utf-8'), PythonLexer(), fmt)
        out.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{rel} (source)</title><style>{css}
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
pre {{ margin: 0; font-size: 13px; line-height: 1.45; }}
.linenos a {{ color: #999; text-decoration: none; }}
.highlight .hll, :target + span, :target {{ background: #fff3b0; }}
</style></head><body>
<p><a href="{home}">{cfg.get('lib_name', lib.name)} documentation</a> · <code>{rel}</code>, as in this repository
(generated from the notebooks in <code>nbs/</code>)</p>
{body}</body></html>
""", encoding='utf-8')


_re_callout = re.compile(r'^(\s*)(:{3,})\s*\{\.callout-(note|tip|warning|important|caution)([^}]*)\}\s*$')


def callouts(md):
    "Quarto callouts (`::: {.callout-note title=\"..\"}`) as MyST admonitions"
    def sub(line):
        m = _re_callout.match(line)
        if not m: return line
        ind, colons, kind, attrs = m.groups()
        t = re.search(r'title\s*=\s*"([^"]*)"', attrs)
        return f'{ind}{colons}{{admonition}} {t.group(1)}\n{ind}:class: {kind}' if t else f'{ind}{colons}{{{kind}}}'
    return '\n'.join(line if code else sub(line) for line, code in md_lines(md))


def _mk_md(src, **kw):
    return {'cell_type': 'markdown', 'metadata': kw.get('metadata', {}), 'source': src}


def _outputs_as_md(outs):
    "Markdown for `output: asis` cells, as Quarto renders them"
    parts = []
    for o in outs:
        data = o.get('data', {})
        if o.get('output_type') == 'stream': parts.append(_txt(o.get('text')))
        elif 'text/markdown' in data: parts.append(_txt(data['text/markdown']))
        elif 'text/html' in data: parts.append(_txt(data['text/html']))
        elif 'text/plain' in data: parts.append(_txt(data['text/plain']))
    return '\n\n'.join(p.strip('\n') for p in parts if p.strip())


def convert_nb(nb, rel, site, mode='site', missing=None):
    "A processed (`_proc`) notebook as a plain notebook for myst-nb (`mode='site'`) or the README"
    nb = copy.deepcopy(nb)
    fm, fm_cell = front_matter(nb)
    cells, lookup = [], site.lookup
    title = fm.get('title')
    if title:
        head = f'# {title}\n'
        if fm.get('description'):
            head += f"\n{{.sem-description}}\n{fm['description']}\n" if mode == 'site' else f"\n> {fm['description']}\n"
        cells.append(_mk_md(head))
    for c in nb['cells']:
        if c is fm_cell: continue
        t, src = c['cell_type'], _src(c)
        if t == 'raw':
            if src.strip(): cells.append(_mk_md(src))                      # Quarto passes raw cells through
            continue
        if t == 'markdown':
            if re.fullmatch(r'\s*<!--.*?-->\s*', src, re.S): continue     # nbdev's "autogenerated" comment
            c = {**c, 'source': src}
            c.pop('id', None)
            cells.append(c)
            continue
        code, d = split_directives(src)
        tags = list(c.get('metadata', {}).get('tags', []))
        outs = c.get('outputs', [])
        if d.get('include') == 'false' or 'remove-cell' in tags: continue
        if re.match(r'^\s*show_doc\(', code) or d.get('output') == 'asis':
            md = _outputs_as_md(outs)
            if re.match(r'^\s*show_doc\(', code): md = showdoc_md(md, lookup, site, site.pages.get(rel, rel))
            if d.get('echo') != 'false' and code.strip():
                cells.append({**c, 'source': code, 'outputs': [], 'metadata': {'tags': tags}})
            if md.strip(): cells.append(_mk_md(md))
            continue
        if d.get('echo') == 'false': tags.append('remove-input')
        if d.get('output') == 'false': tags.append('remove-output')
        meta = {}
        if d.get('code-fold') in ('show', 'true', ''):                   # nbdev's `#| exports` cells
            tags.append('hide-input')
            summary = d.get('code-summary') or 'source'
            meta['mystnb'] = {'code_prompt_show': f'Show {summary.lower()}', 'code_prompt_hide': f'Hide {summary.lower()}'}
        if not code.strip() and not outs: continue
        if not code.strip() and 'remove-input' not in tags: tags.append('remove-input')
        meta['tags'] = sorted(set(tags), key=tags.index)
        if not meta['tags']: del meta['tags']
        cells.append({**{k: v for k, v in c.items() if k != 'id'}, 'source': code, 'metadata': meta})

    for c in cells:
        if c['cell_type'] != 'markdown': continue
        if lookup is not None: c['source'] = lookup.linkify(c['source'])
        c['source'] = fix_links(c['source'], site, rel, mode, missing)
        if mode == 'site': c['source'] = callouts(c['source'])
    for c in cells:                                                        # remaining markdown outputs
        for o in c.get('outputs', []):
            if mode == 'site' and 'text/html' in o.get('data', {}):
                o['data']['text/html'] = tidy_dataframe_html(_txt(o['data']['text/html']))
            if 'text/markdown' in o.get('data', {}):
                md = _txt(o['data']['text/markdown'])
                if lookup is not None: md = lookup.linkify(md)
                o['data']['text/markdown'] = fix_links(md, site, rel, mode, missing)

    if not any(_re_heading.match(l) for c in cells if c['cell_type'] == 'markdown'
               for l, code in md_lines(_src(c)) if not code):                # a page needs a title
        name = re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(rel).stem).replace('_', ' ')
        cells.insert(0, _mk_md(f'# {name[:1].upper() + name[1:]}\n'))
    meta = {k: v for k, v in nb.get('metadata', {}).items() if k in ('kernelspec', 'language_info')}
    # nbdev-clean/jupytext strip these; myst-nb needs them to pick the code highlighter
    meta.setdefault('kernelspec', {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'})
    meta.setdefault('language_info', {'name': 'python', 'pygments_lexer': 'ipython3'})
    for i, c in enumerate(cells): c['id'] = f'cell-{i}'
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}


def _section_of(rel):
    parts = rel.split('/')
    if len(parts) == 1: return '' if re.match(r'^\d', parts[0]) else 'more'
    return parts[0]


def write_sources(proc_dir, src_dir, root=ROOT, cfg=None):
    "Write the Sphinx source tree for the processed notebooks in `proc_dir` into `src_dir`"
    cfg = cfg or _config(root)
    sys.path.insert(0, str(root / 'docs' / '_ext'))
    site = Site(proc_dir, cfg)
    if src_dir.exists(): shutil.rmtree(src_dir)
    src_dir.mkdir(parents=True)
    # assets (images and other files the notebooks link to), as proc_nbs copied them
    for p in sorted(Path(proc_dir).rglob('*')):
        rel = p.relative_to(proc_dir)
        if p.is_file() and p.suffix not in ASSET_SKIP and not any(o[0] in '_.' for o in rel.parts):
            (src_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src_dir / rel)
    # first pass for the anchors every page has, so links to them can be checked
    first = {rel: convert_nb(nb, rel, site) for rel, nb in site.nbs.items()}
    for rel, nb in first.items():
        site.anchors[site.pages[rel]] = set().union(*[heading_slugs(_src(c)) for c in nb['cells'] if c['cell_type'] == 'markdown'])
    missing, out = [], {}
    for rel, nb in site.nbs.items(): out[site.pages[rel]] = convert_nb(nb, rel, site, missing=missing)
    for m in sorted(set(missing)): print(f'note: link anchor not found, linking to the page instead: {m}', file=sys.stderr)
    for rel in sorted(site.repo_assets):                                   # repository files the pages link to
        (src_dir / REPO_ASSETS / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(site.root / rel, src_dir / REPO_ASSETS / rel)

    # toctree: one captioned section per folder, pages ordered by source file name
    secs = {}
    for rel, doc in site.pages.items():
        if doc == 'index' or doc not in out: continue                     # (a notebook nbdev did not process)
        secs.setdefault(_section_of(rel), []).append((rel, doc))
    order = SECTION_ORDER + sorted(k for k in secs if k not in SECTION_ORDER)
    toc = []
    for k in order:
        if k not in secs: continue
        cap = SECTIONS.get(k) or k.replace('_', ' ').replace('-', ' ').capitalize()
        docs = '\n'.join(d for _, d in sorted(secs[k]))
        toc.append(f'```{{toctree}}\n:hidden:\n:caption: {cap}\n\n{docs}\n```')
    index = out.get('index') or {'cells': [_mk_md(f"# {cfg.get('title', 'Documentation')}\n\n{cfg.get('description', '')}\n")],
                                 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    if toc: index['cells'].append(_mk_md('\n\n'.join(toc)))
    out['index'] = index
    for doc, nb in out.items():
        for i, c in enumerate(nb['cells']): c['id'] = f'cell-{i}'
        dest = src_dir / (doc + '.ipynb')
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return site

# ---------------------------------------------------------------------------------------
# 3. Sphinx

def build(out=None, root=ROOT, force=False, quiet=True, work=None):
    """Build the HTML site into `out` (default `root`/_build/html); return its path.
    `work` holds the generated sources and Sphinx's doctrees (default `root`/_build)."""
    root = Path(root).resolve()
    out = Path(out or root / '_build' / 'html').resolve()
    work = Path(work or root / '_build').resolve()
    t0 = time.time()
    cfg = _config(root)
    proc = nbdev_proc(root, force=force)
    t1 = time.time()
    src = work / 'src'
    site = write_sources(proc, src, root, cfg)
    t2 = time.time()
    # myst-nb puts notebook images in jupyter_execute/ beside the HTML folder: keep that in `work`
    html = out if out.parent == work else work / 'html'
    for d in {html, out}:
        if d.exists() and (d / '.buildinfo').exists(): shutil.rmtree(d)      # only ever a previous site
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-W', '--keep-going', '-E', '-j', 'auto',
           '-c', str(root / 'docs'), '-d', str(work / 'doctrees'), str(src), str(html)]
    if quiet: cmd.append('-q')
    r = subprocess.run(cmd, cwd=root)
    if r.returncode:
        where = '\n'.join(f'  {src / (d + ".ipynb")}  <-  nbs/{rel}' for rel, d in sorted(site.pages.items()))
        raise SystemExit(f'sphinx-build failed (exit {r.returncode}): {" ".join(cmd)}\n'
                         f'(warnings are errors; the pages Sphinx names come from these notebooks:)\n{where}')
    source_pages(root, cfg, html)
    if html != out: shutil.copytree(html, out, dirs_exist_ok=True)
    print(f'docs: {out}/index.html  (nbdev {t1 - t0:.1f}s, convert {t2 - t1:.1f}s, sphinx {time.time() - t2:.1f}s)')
    return out

# ---------------------------------------------------------------------------------------
# README.md

def _fence(s, lang=''):
    n = max([3] + [len(m) + 1 for m in re.findall(r'`{3,}', s)])
    return f"{'`' * n}{lang}\n{s.rstrip()}\n{'`' * n}"


def readme_md(nb):
    "README markdown from a converted index notebook: markdown, code cells and their text outputs"
    parts = []
    for i, c in enumerate(nb['cells']):
        src, tags = _src(c), c.get('metadata', {}).get('tags', [])
        if c['cell_type'] == 'markdown':
            parts.append(src.strip())
            if i == 0: parts.append('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->')
            continue
        if 'remove-cell' in tags: continue
        if src.strip() and 'remove-input' not in tags: parts.append(_fence(src, 'python'))
        if 'remove-output' in tags: continue
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if o.get('output_type') == 'stream' and o.get('name') == 'stdout': parts.append(_fence(_txt(o['text'])))
            elif 'text/markdown' in data: parts.append(_txt(data['text/markdown']).strip())
            elif 'text/plain' in data and not any(k.startswith('image/') for k in data):
                parts.append(_fence(_txt(data['text/plain'])))
    return '\n\n'.join(p for p in parts if p) + '\n'


def readme(root=ROOT, dest=None):
    "Write README.md at `root` from nbs/index.ipynb (processed by nbdev, rendered without Quarto)"
    root = Path(root).resolve()
    cfg = _config(root)
    if not (Path(cfg.nbs_path) / 'index.ipynb').exists(): raise SystemExit(f'no {cfg.nbs_path}/index.ipynb to make README.md from')
    proc = nbdev_proc(root, file_glob='index.ipynb')
    sys.path.insert(0, str(root / 'docs' / '_ext'))
    site = Site(proc, cfg)
    nb = convert_nb(site.nbs['index.ipynb'], 'index.ipynb', site, mode='readme')
    dest = Path(dest or root / 'README.md')
    dest.write_text(readme_md(nb), encoding='utf-8')
    print(f'wrote {dest}')
    return dest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=None, help='HTML output folder (default: _build/html)')
    p.add_argument('--readme', action='store_true', help='write README.md from nbs/index.ipynb instead')
    p.add_argument('--force', action='store_true', help="ignore nbdev's _proc cache")
    p.add_argument('--root', default=str(ROOT), help='project root (default: this checkout)')
    p.add_argument('--work', default=None, help='folder for the generated sources and doctrees (default: _build)')
    p.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress output")
    p.add_argument('--nbdev-only', action='store_true', help=argparse.SUPPRESS)   # the child of `nbdev_proc`
    p.add_argument('--file-glob', default='', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.nbdev_only: nbdev_proc(a.root, force=a.force, file_glob=a.file_glob, isolated=False)
    elif a.readme: readme(a.root)
    else: build(a.out, a.root, force=a.force, quiet=not a.verbose, work=a.work)


if __name__ == '__main__': main()
