"""`benchmarks/untuned_data.py`: its splits and data, and a smoke run of every code path (SEM at its default γ against γ 0)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_script
from fastai_sem.step import default_gamma

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'untuned_data.py'


@pytest.fixture(scope='module')
def script(): return load_script(SCRIPT)


def test_stratified_split_holds_out_a_fifth_of_each_class_the_same_way_every_time(script):
    y = np.repeat(np.arange(4), [10, 20, 30, 5])
    train, valid = script.stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(train, valid)) == 0 and sorted(np.concatenate([train, valid])) == list(range(len(y)))
    assert [int((y[valid] == c).sum()) for c in range(4)] == [2, 4, 6, 1]
    assert all(np.array_equal(a, b) for a, b in zip(script.stratified_split(y, 0.2, seed=0), (train, valid)))
    assert not np.array_equal(script.stratified_split(y, 0.2, seed=1)[1], valid)


def test_digits_are_upscaled_to_28_pixel_uint8_images(script):
    x, y = script.load_digits28()
    assert x.shape == (1797, 28, 28) and x.dtype == np.uint8 and x.max() == 255 and x.min() == 0
    assert sorted(set(y.tolist())) == list(range(10))
    x_tr, y_tr, x_va, y_va = script.load_data('digits')
    assert len(x_tr) + len(x_va) == 1797 and abs(len(x_va) - 0.2*1797) < 10


def test_smoke_run_compares_the_default_gamma_with_gamma_0_on_both_datasets(script, tmp_path, capsys):
    script.main(['--smoke', '--out-dir', str(tmp_path), '--mixes', 'cutmix', '--threads', '1'])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ['untuned_data.digits.cnn.cutmix.csv', 'untuned_data.mnist5k.cnn.cutmix.csv']
    for f in files:
        runs = pd.read_csv(tmp_path/f)
        assert sorted(runs.method.unique()) == ['SEM', 'plain cutmix'] and sorted(runs.seed.unique()) == [0, 1]
        assert set(runs[runs.method == 'SEM'].gamma) == {default_gamma('cutmix')} and set(runs[runs.method != 'SEM'].gamma) == {0.}
        assert runs[['clean_acc', 'corruption_acc', 'auroc_msp', 'auroc_energy', 'ece']].notna().all().all()
    table = script.summary(tmp_path)
    assert list(table.data) == ['digits', 'mnist5k'] and (table.seeds == 2).all()
    assert 'SEM at its defaults minus the plain mixer' in capsys.readouterr().out
