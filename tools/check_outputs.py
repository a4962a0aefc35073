"""Re-execute notebooks and report the code cells whose stored outputs differ from what the code gives now.

The docs site shows the outputs stored in the notebooks (it executes nothing), and `make test` runs the notebooks
without comparing their outputs, so a change that moves a result leaves the pages showing the old one, and their
prose reading it. This re-executes each notebook in memory, from its own folder, running the cells nbdev's tests
run (`nb_test_cells`: slow ones included, not those marked `eval: false`), and prints, per code cell whose text
outputs or figures changed, the lines that differ (a figure as a digest of its PNG). Timings differ on every run: read past them.
With --write the fresh outputs replace the stored ones (warnings on stderr are dropped; markdown is kept as it is):
then read the prose beside every changed cell, and run `nbdev-clean`.

    .venv/bin/python tools/check_outputs.py                       # every notebook under nbs/ (about 12 min on 2 cores)
    .venv/bin/python tools/check_outputs.py nbs/tutorials/05_robustness_and_ood.ipynb --write
"""
import argparse, difflib, hashlib, json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def shown_lines(cell) -> list:
    """What a code cell shows: streams, plain-text results and error names, line by line (HTML progress bars left out),
    and a digest of each PNG image, so that a figure drawn from other data counts as changed"""
    lines = []
    for o in cell.get('outputs', []):
        t = o.get('text') or o.get('data', {}).get('text/plain')
        if t and 'fastprogress' not in ''.join(t): lines += ''.join(t).splitlines()
        if png := o.get('data', {}).get('image/png'): lines.append(f"image/png {hashlib.sha1(''.join(png).encode()).hexdigest()[:12]}")
        if o.get('output_type') == 'error': lines.append(f"error: {o.get('ename')}: {o.get('evalue')}")
    return lines

def _name(p: Path) -> str: return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)

def is_warning(o) -> bool:
    return o.get('output_type') == 'stream' and o.get('name') == 'stderr' and 'Warning' in ''.join(o.get('text', ''))

def check(nb_path: Path, write: bool) -> int:
    "Execute `nb_path`, print the changed cells; return their number (-1 if it did not run)"
    import nbformat
    from nbclient import NotebookClient
    from nbdev.test import nb_test_cells
    stored = json.loads(nb_path.read_text(encoding='utf-8'))
    fresh = nbformat.reads(nb_path.read_text(encoding='utf-8'), as_version=4)   # sources joined into strings
    runs = {c.idx_ for c in nb_test_cells(nb_path)}   # the cells `nbdev-test --flags slow` runs (not `eval: false` ones)
    for i, c in enumerate(fresh.cells):
        if c.cell_type == 'code' and i not in runs: c.source = ''   # not run: its stored outputs are left as they are
    try: NotebookClient(fresh, timeout=1800, resources={'metadata': {'path': str(nb_path.parent)}}).execute()
    except Exception as e:
        print(f"{_name(nb_path)}: did not run\n{str(e)[-2000:]}")
        return -1
    changed = 0
    for i, (old, new) in enumerate(zip(stored['cells'], fresh['cells'])):
        if old['cell_type'] != 'code' or not new['source']: continue
        new['outputs'] = [o for o in new.get('outputs', []) if not is_warning(o)]
        a, b = shown_lines(old), shown_lines(new)
        if a == b: continue
        changed += 1
        head = ''.join(old['source']).strip().splitlines()[:1]
        print(f"{_name(nb_path)}, cell {i} ({head[0][:70] if head else ''}):")
        for line in list(difflib.unified_diff(a, b, 'stored', 'fresh', n=0, lineterm=''))[2:40]: print('   ', line[:160])
    if write and changed:
        for old, new in zip(stored['cells'], fresh['cells']):
            if old['cell_type'] == 'code' and new['source']: old['outputs'] = new['outputs']
        nb_path.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    print(f"{_name(nb_path)}: {changed} code cell(s) with other outputs" + (' (written)' if write and changed else ''))
    return changed

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('notebooks', nargs='*', help='notebooks to check (default: every notebook under nbs/)')
    p.add_argument('--write', action='store_true', help='store the fresh outputs in the notebooks')
    args = p.parse_args()
    nbs = [Path(n).resolve() for n in args.notebooks] or [n for n in sorted((ROOT / 'nbs').rglob('*.ipynb'))
                                                        if '.ipynb_checkpoints' not in n.parts]
    results = [check(n, args.write) for n in nbs]
    print(f"\n{sum(r > 0 for r in results)} of {len(nbs)} notebooks have other outputs; {sum(r < 0 for r in results)} did not run")
