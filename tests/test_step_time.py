"""`benchmarks/step_time.py`: its smoke run writes every table, with every penalty mode, and bad options are refused.

Nothing here is timed: the numbers the run prints are not checked, only that each part ran and wrote its rows.
"""
import subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'step_time.py'


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    "One smoke run with two penalty-mode contenders and a null-space head; its output folder and stdout"
    out = tmp_path_factory.mktemp('step_time')
    res = _run('--quick', '--threads', '1', '--no-memory', '--heads', '64x10', '--head-rounds', '1', '--head-inner', '1',
               '--out', str(out), '--contenders', 'SEM mixup nullspace', 'SEM cutmix spatial')
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout


def test_quick_run_writes_every_table(quick):
    out, stdout = quick
    steps = pd.read_csv(out / 'step_time_quick.csv')
    assert list(steps.contender) == ['fastai MixUp', 'SEM mixup nullspace', 'SEM cutmix spatial']   # the reference is added
    assert (steps.ratio > 0).all() and steps.loc[steps.contender == 'fastai MixUp', 'ratio'].item() == 1
    pen = pd.read_csv(out / 'step_time_quick_penalty.csv')
    assert {(m, mode) for m, mode in zip(pen.mixer, pen['mode'])} == {
        (m, mode) for m in ('mixup', 'cutmix') for mode in ('raw', 'scale-free', 'spatial', 'nullspace')}
    assert (pen.loc[pen['mode'] == 'raw', 'over_raw_us'] == 0).all() and pen.over_raw_x_mixup.notna().all()
    heads = pd.read_csv(out / 'step_time_quick_heads.csv')
    assert heads[['features', 'classes', 'bs']].values.tolist() == [[64, 10, 64]]
    assert (heads[['mse_us', 'nullspace_us']] > 0).all(axis=None) and heads.calls.item() == 1
    assert 'The null-space distance alone by classifier size' in stdout and 'penalty op cnn@28' in stdout


def test_mode_contenders_set_the_penalty():
    st = load_script(SCRIPT)
    null, = st.contender_cbs('SEM cutmix nullspace')
    assert (null.distance, null.standardize, null.spatial) == ('nullspace', 'global', False)
    spatial, = st.contender_cbs('SEM mixup spatial')
    from fastai_sem.penalty import mse_distance
    assert (spatial.distance, spatial.standardize, spatial.spatial) == (mse_distance, 'global', True)


def test_time_interleaved_calls_each_op_per_round():
    st = load_script(SCRIPT)
    calls = []
    times = st.time_interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, rounds=3, inner=2,
                                device=st.torch.device('cpu'), seed=0, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}   # the warm-up round is not kept
    assert calls.count('a') == calls.count('b') == 8 and all(t > 0 for v in times.values() for t in v)


@pytest.mark.parametrize('spec, says', [('10x64', 'more features than classes'), ('2048by1000', '<features>x<classes>')])
def test_bad_heads_are_refused(spec, says):
    res = _run('--heads', spec, timeout=120)
    assert res.returncode == 2 and says in res.stderr and 'Traceback' not in res.stderr
