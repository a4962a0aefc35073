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


def test_any_ece_needs_gamma_find(script):
    with pytest.raises(SystemExit): script.parse_args(['--any-ece'])


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
    assert 'SEM minus the plain mixer' in capsys.readouterr().out


@pytest.mark.parametrize('found', [0.3, 0.])
def test_gamma_find_mode_compares_at_the_suggested_gamma_or_says_there_is_nothing_to_compare(script, tmp_path, monkeypatch, found):
    "With --gamma-find, SEM trains at what `find_gamma` returns (faked here: the smoke run's tiny data suggests γ 0)"
    table = pd.DataFrame(dict(accuracy=[.5, .6], corruption_acc=[.4, .5], ece=[.1, .1]), index=pd.Index([0., found], name='gamma'))
    seen = []
    monkeypatch.setattr(script, 'find_gamma', lambda x, y, arch, mix, args: seen.append((len(x), args.any_ece)) or (found, table))
    any_ece = found > 0   # both ways of choosing, one each
    script.main(['--smoke', '--gamma-find', '--out-dir', str(tmp_path), '--data', 'digits', '--mixes', 'mixup', '--threads', '1']
                + ['--any-ece']*any_ece)
    assert seen == [(256, any_ece)]   # chosen on the training images only
    source = 'gamma_find_any_ece' if any_ece else 'gamma_find'
    runs = pd.read_csv(tmp_path/f'untuned_data.digits.cnn.mixup.{source}.csv')
    assert set(runs.gamma_from) == {source} and set(runs[runs.method == 'SEM'].gamma) == {found}
    row = script.summary(tmp_path).iloc[0]
    assert row.gamma == found and row.gamma_from == source
    if found: assert sorted(runs.method.unique()) == ['SEM', 'plain mixup'] and row.seeds == 2
    else: assert len(runs) == 1 and row.seeds == 0 and 'nothing compared' in row.beyond_noise


def test_gamma_find_at_the_default_gamma_reuses_the_default_comparison(script, tmp_path, monkeypatch):
    "Same settings, same runs: a suggested γ equal to the default takes the default comparison's rows instead of training again"
    args = ['--smoke', '--out-dir', str(tmp_path), '--data', 'digits', '--mixes', 'mixup', '--threads', '1']
    script.main(args)
    import fastai_sem.compare
    def no_training(*a, **k): raise AssertionError('trained again')
    monkeypatch.setattr(fastai_sem.compare, 'compare_sem', no_training)
    table = pd.DataFrame(dict(accuracy=[.5], corruption_acc=[.5], ece=[.1]), index=pd.Index([default_gamma('mixup')], name='gamma'))
    monkeypatch.setattr(script, 'find_gamma', lambda *a: (default_gamma('mixup'), table))
    script.main(args + ['--gamma-find'])
    default, found = (pd.read_csv(tmp_path/f'untuned_data.digits.cnn.mixup{s}.csv') for s in ('', '.gamma_find'))
    pd.testing.assert_frame_equal(default[['method', 'seed', 'gamma', 'clean_acc', 'ece']], found[['method', 'seed', 'gamma', 'clean_acc', 'ece']])
    assert set(found.gamma_from) == {'gamma_find'}
