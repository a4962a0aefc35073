#!/usr/bin/env python
"""Does temperature scaling take away SEM's calibration cost? SEM at several γ against the plain mixer, ECE before and after.

    python benchmarks/calibration.py                  # CNN, MixUp, three datasets, γ 0.03 0.3 1, 3 seeds (measured: 280 s MNIST-5k)
    python benchmarks/calibration.py --arch resnet18 --gammas 0.3 --data digits   # one dataset, ResNet-18 at one γ
    python benchmarks/calibration.py --summary        # the table of what is in benchmarks/results, nothing trained
    python benchmarks/calibration.py --smoke --out-dir smoke   # every code path in seconds

A larger γ bought robustness on some data and cost calibration (ECE) wherever it was measured ("SEM at its defaults").
Temperature scaling divides the logits by one number T fitted on held-out labelled images
(`fastai_sem.ood.fit_temperature`); it changes no prediction, only the confidences. If it removed SEM's extra ECE,
a user could take the robustness and fix the calibration afterwards.

Each comparison is `fastai_sem.compare.compare_sem` (SEM at γ against SEMMixup at γ 0: the same initial weights,
batches, λ and partners per seed), on the data of `untuned_data.py` (`mnist5k`, `digits`) and on `fashion`, the
embedded Fashion-MNIST subset of `make run` (3,000 training and 1,000 held-out images). Its usual metrics are kept.
Then, per run, the held-out images are split in two stratified halves (seed 0): each half fits T for the other and
the ECE of the other half is measured with and without it; the two halves' ECEs are averaged, so no image is scored
with a T fitted on it. Nothing is chosen on these numbers.

Each comparison writes `calibration.<data>.<arch>.<mix>.csv` (one row per method, γ and seed) into
`--out-dir`, so comparisons can run side by side (`--threads 1` each).
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)
import numpy as np, pandas as pd, torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))   # untuned_data.py's data and options, also when loaded from elsewhere
from untuned_data import add_run_options, load_data, parse_run_options, stratified_split

DATASETS = ('mnist5k', 'digits', 'fashion')


def two_fold_ece(logits:torch.Tensor, y:np.ndarray, seed:int=0) -> dict:
    "ECE without and with temperature scaling, each stratified half of (`logits`, `y`) fitting T for the other; averaged"
    from fastai_sem.ood import expected_calibration_error, fit_temperature
    halves = stratified_split(y, 0.5, seed)
    ece, ece_ts, temps = [], [], []
    for fit, score in (halves, halves[::-1]):
        t = fit_temperature(logits[fit], y[fit])
        ece.append(expected_calibration_error(F.softmax(logits[score], 1), y[score]))
        ece_ts.append(expected_calibration_error(F.softmax(logits[score] / t, 1), y[score]))
        temps.append(t)
    return dict(ece_halves=np.mean(ece), ece_ts=np.mean(ece_ts), temperature=np.mean(temps))


def out_file(out_dir:Path, data:str, arch:str, mix:str) -> Path: return out_dir / f"calibration.{data}.{arch}.{mix}.csv"


def run_comparisons(data:str, args) -> pd.DataFrame:
    "`compare_sem` at each γ of `args.gammas` on `data`; its runs with the ECEs of `two_fold_ece`, one row per method, γ and seed"
    from fastai_sem.cli import make_learner
    from fastai_sem.compare import compare_sem, _array_dls
    from fastai_sem.data import load_fashion_small
    from fastai_sem.ood import get_logits
    if data == 'fashion': x_tr, y_tr, x_va, y_va = load_fashion_small()
    else: x_tr, y_tr, x_va, y_va = load_data(data)
    if args.smoke: x_tr, y_tr = x_tr[:256], y_tr[:256]
    dls = _array_dls(x_tr, y_tr, x_va, y_va, bs=args.bs)
    ood = 'mnist' if data == 'fashion' else load_fashion_small()[2]   # digits against clothes, clothes against digits
    learners = {}
    def learner(dls, cbs, seed):
        learners[cbs[0].gamma, seed] = learn = make_learner(dls, args.arch, cbs=cbs, seed=seed)
        return learn
    rows = []
    for gamma in args.gammas:
        res = compare_sem(mix=args.mix, seeds=list(range(args.seeds)), epochs=args.epochs, lr=args.lr, dls=dls, learner=learner,
                          ood=ood, n_per_class=args.n_per_class, corruptions=args.corruptions, progress=False, gamma=gamma)
        print(f"\n{data}, {args.arch}, {args.mix}, γ {gamma:g}:"); res.print_report()
        for r in res.runs.to_dict('records'):
            logits, targets = get_logits(learners.pop((r['gamma'], r['seed'])), dls.valid)
            rows.append(dict(r, sem_gamma=gamma, **two_fold_ece(logits.float(), targets.numpy())))
    return pd.DataFrame(rows).assign(data=data, arch=args.arch, mix=args.mix, epochs=args.epochs, threads=torch.get_num_threads())


def summary(out_dir:Path) -> pd.DataFrame:
    "Per comparison found in `out_dir`: SEM minus the plain mixer in ECE without and with temperature scaling, mean ± std over seeds"
    from fastai_sem.compare import paired_differences
    rows = []
    for fn in sorted(out_dir.glob('calibration.*.csv')):
        runs = pd.read_csv(fn)
        for gamma, g in runs.groupby('sem_gamma'):
            plain = [m for m in g.method.unique() if m != 'SEM'][0]
            d = paired_differences(g, 'SEM', plain, ('ece_halves', 'ece_ts', 'clean_acc', 'corruption_acc'))
            means = g.groupby('method')[['ece_halves', 'ece_ts', 'temperature']].mean()
            rows.append(dict(data=g.data.iloc[0], arch=g.arch.iloc[0], mix=g.mix.iloc[0], gamma=gamma, seeds=len(d),
                             plain_ece=f"{means.ece_halves[plain]:.4f}", plain_ece_ts=f"{means.ece_ts[plain]:.4f}",
                             **{f'd_{k}': f"{d[k].mean():+.4f} ± {d[k].std():.4f}" for k in d},
                             T_plain=f"{means.temperature[plain]:.2f}", T_sem=f"{means.temperature['SEM']:.2f}"))
    return pd.DataFrame(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', nargs='+', default=list(DATASETS), choices=DATASETS)
    p.add_argument('--gammas', nargs='+', type=float, default=[0.03, 0.3, 1.], help="SEM's γ, each against γ 0")
    p.add_argument('--arch', default='cnn', choices=('cnn', 'resnet18'))
    p.add_argument('--mix', default='mixup', choices=('mixup', 'cutmix'))
    add_run_options(p)
    args = parse_run_options(p, argv)
    if any(g <= 0 for g in args.gammas): p.error('--gammas: each γ must be > 0 (γ 0 is the plain mixer every γ is compared with)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.summary:
        for data in args.data: run_comparisons(data, args).to_csv(out_file(args.out_dir, data, args.arch, args.mix), index=False)
    with pd.option_context('display.width', 220, 'display.max_columns', 20):
        print('\nSEM minus the plain mixer (per-seed differences, mean ± std); ECE on halves of the held-out images, without and with T:')
        print(summary(args.out_dir).to_string(index=False))
    print(f"done in {time.perf_counter() - start:.0f} s; CSVs in {args.out_dir}")


if __name__ == '__main__': main()
