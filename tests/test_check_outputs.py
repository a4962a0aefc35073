"""tools/check_outputs.py: finds the code cells whose stored outputs are not what the code gives, and stores the fresh ones."""
import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path, cells):
    lines = lambda src: src.splitlines(keepends=True)   # as notebooks store them
    nb = {'cells': [dict(cell_type='code', metadata={}, execution_count=None, source=lines(src), outputs=outs) for src, outs in cells],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))
    return path


def test_reports_and_writes_stale_outputs(tmp_path, capsys):
    stream = lambda text, name='stdout': dict(output_type='stream', name=name, text=text)
    nb = _notebook(tmp_path / 'demo.ipynb', [
        ("print(1 + 1)", [stream('3\n')]),                                      # stale
        ("print('same')", [stream('same\n')]),                                 # up to date
        ("import warnings; warnings.warn('noise'); print(2)", [stream('2\n')]),  # a warning on stderr is not a change
        ("#| eval: false\nraise SystemExit('not run, as nbdev does not run it')", [stream('kept\n')]),
    ])
    tool = load_script(ROOT / 'tools' / 'check_outputs.py')
    assert tool.check(nb, write=False) == 1
    out = capsys.readouterr().out
    assert 'cell 0' in out and '-3' in out and '+2' in out and 'cell 1' not in out and 'cell 2' not in out, out
    assert json.loads(nb.read_text())['cells'][0]['outputs'][0]['text'] == '3\n'   # reported, not written
    assert tool.check(nb, write=True) == 1
    cells = json.loads(nb.read_text())['cells']
    assert [''.join(o['text']) for o in cells[0]['outputs']] == ['2\n']
    assert [''.join(o['text']) for o in cells[2]['outputs']] == ['2\n']        # the warning was not stored
    assert [''.join(o['text']) for o in cells[3]['outputs']] == ['kept\n']     # not run, left as stored
    assert tool.check(nb, write=False) == 0


def test_a_figure_drawn_from_other_data_is_a_change(tmp_path, capsys):
    png = lambda data: dict(output_type='display_data', metadata={}, data={'image/png': data, 'text/plain': '<Figure>'})
    show = "from IPython.display import display; display({'image/png': %r, 'text/plain': '<Figure>'}, raw=True)"
    nb = _notebook(tmp_path / 'fig.ipynb', [(show % 'bmV3', [png('b2xk')]), (show % 'c2FtZQ==', [png('c2FtZQ==')])])
    tool = load_script(ROOT / 'tools' / 'check_outputs.py')
    assert tool.check(nb, write=True) == 1   # the same text/plain, another image
    assert 'cell 0' in capsys.readouterr().out
    assert json.loads(nb.read_text())['cells'][0]['outputs'][0]['data']['image/png'] == 'bmV3'
    assert tool.check(nb, write=False) == 0
