"""The docs site, built offline (tools/build_docs.py) and checked in a real browser.

Builds the site from nbs/ into a temporary folder, serves it on 127.0.0.1 and drives
/usr/bin/chromium with playwright (no `playwright install`: the Debian chromium package).
"""
import functools, http.server, json, re, threading, urllib.parse, urllib.request
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
needs_browser = pytest.mark.skipif(not CHROMIUM.exists(), reason='needs /usr/bin/chromium (apt-get install chromium)')
# text that only nbdev sources have: a page showing any of it leaks a directive or a hidden cell
FORBIDDEN = ['#|', '#| export', '#| hide', 'default_exp', 'nbdev.showdoc', 'nbdev_export']


def _build_docs(): return load_script(ROOT / 'tools' / 'build_docs.py')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The built site (a folder) and the URL it is served at"
    work = tmp_path_factory.mktemp('docs')
    out = _build_docs().build(out=work / 'html', root=ROOT, work=work)
    handler = functools.partial(_QuietHandler, directory=str(out))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield out, f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown()
    srv.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api', reason='needs the playwright package')
    if not CHROMIUM.exists(): pytest.skip('needs /usr/bin/chromium (apt-get install chromium)')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    "A browser page that records console errors, page errors, failed and non-local requests"
    def __init__(self, browser, base):
        self.ctx = browser.new_context(viewport={'width': 1400, 'height': 900})
        self.errors, self.external = [], []
        local = ('data:', 'blob:', 'about:') + ((base,) if base else ('file://',))

        def route(r):
            if r.request.url.startswith(local): r.continue_()
            else:
                self.external.append(r.request.url)
                r.abort()
        self.ctx.route('**/*', route)
        self.page = self.ctx.new_page()
        self.page.on('console', lambda m: m.type == 'error' and self.errors.append(f'console: {m.text} ({m.location.get("url")})'))
        self.page.on('pageerror', lambda e: self.errors.append(f'page error: {e}'))
        # net::ERR_ABORTED is the browser cancelling a pending request (e.g. the favicon) when the test navigates on
        self.page.on('requestfailed', lambda r: r.url.startswith(local) and 'ERR_ABORTED' not in str(r.failure)
                     and self.errors.append(f'failed: {r.url} {r.failure}'))
        self.page.on('response', lambda r: r.status >= 400 and self.errors.append(f'HTTP {r.status}: {r.url}'))

    def goto(self, url, idle=True):
        self.page.goto(url, wait_until='load')
        if idle: self.page.wait_for_load_state('networkidle')
        return self.page

    def check(self, what):
        assert not self.external, f'{what}: requests left 127.0.0.1: {self.external}'
        assert not self.errors, f'{what}: ' + '\n'.join(self.errors)

    def __enter__(self): return self
    def __exit__(self, *exc): self.ctx.close()


def _pages(out, sources=False):
    "The site's HTML pages; with `sources`, also the highlighted copies of the library's files (`_modules/`)"
    return sorted(p.relative_to(out).as_posix() for p in out.rglob('*.html') if sources or not p.relative_to(out).parts[0] == '_modules')


# No page, stored output or docstring may send the reader outside the repository or show where it was built.
NOT_STANDALONE = [(re.compile(r'(?<![\w.])shared/|baselines\.md'), 'a file outside the repository'),
                  (re.compile(r'/(work|tmp|home|root|Users)/[\w.-]'), 'a path of the machine it was built on'),
                  (re.compile(r'site-packages|\.venv/lib'), 'a path of the environment it ran in'),
                  (re.compile(r'fastai-sem\.github\.io|github\.com/fastai-sem|fastai-sem\.invalid|<this repository>'),
                   'a host or address that does not exist'),
                  (re.compile(r'\b(is|are|isn.t|aren.t|not) (installed|available) here\b|\bhere\b[^.\n]{0,40}\b(not )?installed\b', re.I),
                   'a sentence about what is installed "here"')]


def _not_standalone(text):
    return [f'{why}: ...{text[max(0, m.start() - 50):m.end() + 30]!r}...' for rx, why in NOT_STANDALONE for m in rx.finditer(text)]


def _string_lines(src):
    "Lines of `src` inside multi-line string literals (text a program prints, e.g. its --help, may well be shown)"
    import ast
    try: tree = ast.parse(src)
    except SyntaxError: return set()
    return {i for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.end_lineno > n.lineno
            for i in range(n.lineno, n.end_lineno + 1)}


def _hidden_lines():
    "Distinctive code lines of hidden, include:false and export cells of nbs/ (none should be shown)"
    hidden, shown = set(), set()
    for f in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if any(o[0] in '_.' for o in f.relative_to(ROOT / 'nbs').parts): continue
        for c in json.loads(f.read_text(encoding='utf-8'))['cells']:
            src = ''.join(c['source'])
            dirs = ' '.join(re.findall(r'^\s*#\s*\|\s*(.*)$', src, re.M))
            secret = c['cell_type'] == 'code' and re.search(r'\b(hide|exporti?|default_exp|include:\s*false)\b', dirs) \
                and not re.search(r'\bexports\b', dirs)
            lines = {l.strip() for i, l in enumerate(src.splitlines(), 1) if not (secret and i in _string_lines(src))}
            # not signature lines: show_doc shows those (`x:int=1, # docments`)
            if secret: hidden |= {l for l in lines if len(l) >= 20 and '#' not in l and not l.endswith((',', ':'))
                                  and not re.match(r'(def |class |async |@|\)|["\'])', l)}
            else: shown |= lines
    return hidden - shown


def _term():
    "The symbol to search for: SEMMixup once fastai_sem.callback exists, else any documented symbol"
    if (ROOT / 'fastai_sem' / 'callback.py').exists(): return 'SEMMixup'
    idx = ROOT / 'fastai_sem' / '_modidx.py'
    if idx.exists():
        g = {}
        exec(idx.read_text(encoding='utf-8'), g)
        syms = sorted(k.rsplit('.', 1)[-1] for m in g['d']['syms'].values() for k in m)
        if syms: return syms[0]
    pytest.skip('no documented symbols in the notebooks yet')


def test_build_layout(site):
    out, _ = site
    pages = _pages(out)
    assert 'index.html' in pages and 'search.html' in pages and (out / 'searchindex.js').exists()
    nbs = ROOT / 'nbs'
    mods = sorted(nbs.glob('[0-9]*.ipynb'))
    from nbdev.config import nbpath2html
    for nb in mods + sorted((nbs / 'tutorials').glob('*.ipynb')):
        if nb.name[0] in '_.': continue
        page = nbpath2html(nb.relative_to(nbs)).as_posix()
        assert page in pages, f'{nb.relative_to(ROOT)} has no page {page}'
    html = '\n'.join((out / p).read_text(encoding='utf-8') for p in pages)
    assert not re.search(r'(src|href)="(https?:)?//[^"]*\.(js|css)"', html), 'a page loads a script/style from elsewhere'


@needs_browser
def test_pages_load_clean(site, browser):
    "Every page loads without console errors or outside requests, with all images and no nbdev leftovers"
    out, base = site
    hidden = _hidden_lines()
    with Watched(browser, base) as w:
        for p in _pages(out):
            math = 'window.MathJax' in (out / p).read_text(encoding='utf-8')   # pages with formulas
            page = w.goto(base + p, idle=math)                      # `load` waits for images, not for MathJax
            if math:
                page.wait_for_function('() => window.MathJax && MathJax.startup && MathJax.startup.promise', timeout=15000)
                page.evaluate('() => MathJax.startup.promise')
                n_math, n_done = page.evaluate('() => [document.querySelectorAll(".math").length, document.querySelectorAll("mjx-container").length]')
                assert n_done >= n_math > 0 or n_math == 0, f'{p}: MathJax typeset {n_done} of {n_math} formulas'
            w.check(p)
            broken = page.eval_on_selector_all('img', '(ims) => ims.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)')
            assert not broken, f'{p}: images that did not load: {broken}'
            # the page's text, less inline code in prose (where a notebook may well write about `#| hide`)
            text = page.evaluate('''() => { const a = document.querySelector('article'); if (!a) return '';
                const c = a.cloneNode(true); c.querySelectorAll('code').forEach(e => { if (!e.closest('pre')) e.remove(); });
                return c.textContent; }''')
            for s in FORBIDDEN: assert s not in text, f'{p} shows {s!r}'
            leaked = [l for l in hidden if l in text]
            assert not leaked, f'{p} shows lines of hidden/export cells: {leaked}'


@needs_browser
def test_tables_fit(site, browser):
    "At 1280 px, no table is wider than the page's content column, and no table has an empty-looking index row"
    out, base = site
    too_wide = []
    with Watched(browser, base) as w:
        w.page.set_viewport_size({'width': 1280, 'height': 900})
        for p in _pages(out):
            page = w.goto(base + p, idle=False)
            wide = page.evaluate('''() => { const art = document.querySelector('article'); if (!art) return [];
                const w = art.getBoundingClientRect().width;
                return [...art.querySelectorAll('table')].filter(t => t.getBoundingClientRect().width > w + 1 || t.scrollWidth > w + 1)
                    .map(t => Math.round(t.getBoundingClientRect().width) + 'px > ' + Math.round(w) + 'px: '
                              + t.textContent.replace(/\\s+/g, ' ').trim().slice(0, 80)); }''')
            too_wide += [f'{p}: {x}' for x in wide]
    assert not too_wide, '\n'.join(too_wide)
    for p in _pages(out):
        for head in re.findall(r'<table[^>]*dataframe.*?<thead>(.*?)</thead>', (out / p).read_text(encoding='utf-8'), re.S):
            for row in re.findall(r'<tr[^>]*>(.*?)</tr>', head, re.S):
                cells = [re.sub(r'<[^>]+>', '', c).strip() for c in re.findall(r'<th[^>]*>(.*?)</th>', row, re.S)]
                assert not (len(cells) > 2 and cells[0] and not any(cells[1:])), f'{p}: an index-name row {cells}'


@needs_browser
def test_sidebar_navigation(site, browser):
    "Clicking through every sidebar entry reaches that page, titled as in the sidebar"
    out, base = site
    with Watched(browser, base) as w:
        page = w.goto(base + 'index.html')
        links = page.eval_on_selector_all('.sidebar-tree a.reference.internal',
                                          '(as) => as.map(a => [a.getAttribute("href"), a.textContent.trim()])')
        pages = set(_pages(out)) - {'index.html', 'search.html', 'genindex.html'}
        assert {urllib.parse.urljoin('index.html', h).split('#')[0] for h, _ in links} == pages, \
            'the sidebar should list every page of the site'
        for i, (href, title) in enumerate(links):     # each click from the page the previous one opened
            target = urllib.parse.urljoin(base + 'index.html', href).split('#')[0]
            page.locator('.sidebar-tree a.reference.internal').nth(i).click()
            page.wait_for_load_state('load')
            assert page.url.split('#')[0] == target, f'clicking {title!r} went to {page.url}, not {target}'
            h1 = page.inner_text('article h1')
            assert h1.strip().rstrip('#¶').strip() == title, f'{href}: page title {h1!r}, sidebar says {title!r}'
            assert page.query_selector('.sidebar-tree a.current.reference') is not None
            w.check(href)


def _ids(html): return set(re.findall(r'\sid="([^"]+)"', html))


def test_site_stands_on_its_own(site):
    "The built pages (text, stored outputs, docstrings) mention no file outside the repository, no machine path, no missing host"
    out, _ = site
    bad = {}
    for p in out.rglob('*.html'):
        rel = p.relative_to(out).as_posix()
        text = re.sub(r'<(script|style)\b.*?</\1>', '', p.read_text(encoding='utf-8'), flags=re.S)
        if found := _not_standalone(text): bad[rel] = found
    assert not bad, bad


def test_notebooks_stand_on_their_own():
    "Nor do the notebooks (their prose, code and stored outputs) or README.md"
    bad = {}
    for f in sorted((ROOT / 'nbs').rglob('*.ipynb')) + [ROOT / 'README.md']:
        if any(o[0] in '_.' for o in f.relative_to(ROOT).parts): continue
        if found := _not_standalone(f.read_text(encoding='utf-8')): bad[f.relative_to(ROOT).as_posix()] = found
    assert not bad, bad


def test_api_entries(site):
    "Each documented function or class has a wrapping signature, a parameter table and a source link into this repository"
    out, _ = site
    n = 0
    for p in _pages(out):
        html = (out / p).read_text(encoding='utf-8')
        for sec in re.findall(r'<section class="sem-doc[^"]*"[^>]*>(.*?)(?=<section|</article>)', html, re.S):
            title = re.sub(r'<[^>]+>', '', re.search(r'<h\d[^>]*>(.*?)</h\d>', sec, re.S).group(1)).strip('¶# \n')
            assert 'sem-signature' in sec, f'{p}: {title} has no signature line'
            assert 'highlight-python' not in sec.split('sem-signature')[0], f'{p}: {title} shows a signature code block'
            src = re.search(r'class="sem-source-link[^"]*" href="([^"#]+)#L-(\d+)"', sec)
            assert src, f'{p}: {title} has no source link'
            target = (out / p).parent / src.group(1)
            assert target.exists() and f'id="L-{src.group(2)}"' in target.read_text(encoding='utf-8'), f'{p}: {title}: {src.group(0)}'
            n += 1
    assert n > 20, f'only {n} API entries'
    cli = (out / 'cli.html').read_text(encoding='utf-8')
    entry = re.search(r'id="run-training".*?</table>', cli, re.S).group(0)
    for want in ['sem-params', 'Parameter', 'Type', 'Default', 'Description', 'epochs', 'chosen from the data']:
        assert want in entry, want


def test_internal_links(site):
    "Every link between pages of the site points to a page (and anchor) that exists"
    out, base = site
    bad = []
    for p in _pages(out):
        for href in re.findall(r'href="([^"#:?]*\.html)(#[^"]*)?"', (out / p).read_text(encoding='utf-8')):
            target = (out / p).parent / urllib.parse.unquote(href[0])
            if not target.exists(): bad.append(f'{p} -> {href[0]}')
            elif href[1] and href[1][1:] not in _ids(target.read_text(encoding='utf-8')): bad.append(f'{p} -> {"".join(href)}')
    assert not bad, 'broken links: ' + ', '.join(bad)
    with urllib.request.urlopen(base + 'index.html') as r: assert r.status == 200


def _search(w, url, term):
    page = w.goto(url)
    page.wait_for_function('() => { const s = document.querySelector("#search-results .search-summary, #search-results p");'
                           ' return document.querySelectorAll("#search-results li").length > 0 || (s && /finished|did not match/i.test(s.textContent)); }',
                           timeout=15000)
    return page.eval_on_selector_all('#search-results li a', '(as) => as.map(a => [a.getAttribute("href"), a.textContent])')


@needs_browser
def test_search(site, browser):
    "The offline search page finds the library's main symbol"
    out, base = site
    term = _term()
    with Watched(browser, base) as w:
        hits = _search(w, base + f'search.html?q={term}', term)
        assert hits, f'searching {term!r} found nothing'
        assert any(term.lower() in (h + t).lower() for h, t in hits), hits
        page = w.page
        page.click('#search-results li a')
        page.wait_for_load_state('load')
        assert term in page.inner_text('article')
        w.check('search')


@needs_browser
def test_search_from_file(site, browser):
    "Opened from disk (file://), the site still searches without errors"
    out, _ = site
    term = _term()
    with Watched(browser, None) as w:
        hits = _search(w, (out / 'search.html').as_uri() + f'?q={term}', term)
        assert hits, f'searching {term!r} from file:// found nothing'
        w.check('search from file://')


def test_readme(tmp_path):
    "README.md is made offline from nbs/index.ipynb, without directives or hidden cells"
    if not (ROOT / 'nbs' / 'index.ipynb').exists(): pytest.skip('no nbs/index.ipynb yet')
    dest = _build_docs().readme(ROOT, dest=tmp_path / 'README.md')
    md = dest.read_text(encoding='utf-8')
    assert md.startswith('# ') and 'AUTOGENERATED' in md
    fence = re.compile(r'^(`{3,})[^\n]*\n(.*?)^\1', re.S | re.M)
    code = '\n'.join(b for _, b in fence.findall(md))                  # code cells and outputs
    prose = re.sub(r'`[^`\n]*`', '', fence.sub('', md))               # less inline code, which may name `#| hide`
    for s in FORBIDDEN: assert s not in code + prose, f'README shows {s!r}'
    leaked = [l for l in _hidden_lines() if l in md]
    assert not leaked, f'README shows lines of hidden/export cells: {leaked}'
