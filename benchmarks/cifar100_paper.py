#!/usr/bin/env python
"""CIFAR-100 with PreActResNet-18: the setting of the SEM paper (Han et al., arXiv 2308.06451), as a fastai recipe.

This needs a GPU and the CIFAR-100 data; nothing is downloaded. On a CUDA machine:

    # the five methods, one seed each (≈ 200 epochs × 391 steps; about 1-1.5 h per run on one modern GPU)
    for m in erm mixup cutmix sem-mixup sem-cutmix; do
        python benchmarks/cifar100_paper.py --data ~/data/cifar100 --method $m --seed 0
    done
    # pick γ on a validation split carved from the training set (the last 5,000 training images), never on test:
    for g in 0.3 1 3 10; do python benchmarks/cifar100_paper.py --data ~/data/cifar100 --method sem-mixup --gamma $g --valid 5000; done
    # corruption robustness as well, with Hendrycks' CIFAR-100-C (a folder of <corruption>.npy and labels.npy):
    python benchmarks/cifar100_paper.py --data ~/data/cifar100 --method sem-mixup --gamma 1 --cifar100c ~/data/CIFAR-100-C

    python benchmarks/cifar100_paper.py --dry-run     # CPU, random CIFAR-shaped tensors, up to the first training step

`--data` is either a torchvision CIFAR-100 root (the folder holding `cifar-100-python/`, or that folder itself, as
`torchvision.datasets.CIFAR100(root, download=False)` reads it) or an ImageFolder: `train/<class>/*.png` and
`test/<class>/*.png` (`valid/` is accepted for `test/`). Images are read once into memory as uint8 (150 MB).

Settings (defaults): PreActResNet-18 (He et al. 2016, the CIFAR variant of the mixup paper's code: 3×3 stem, 64-128-
256-512, global average pool, Linear); SGD, momentum 0.9, weight decay 5e-4 (L2, coupled as in `torch.optim.SGD`),
lr 0.1 divided by 10 at epochs 100 and 150 (`--schedule step`; `cosine` and `one_cycle` are available), 200 epochs,
batch 128; augmentation: random crop 32 from the image zero-padded by 4 px and random horizontal flip, then
normalisation with the CIFAR-100 channel statistics; Beta(α, α) with α = 1 for MixUp and CutMix (the mixup paper's
CIFAR setting); `MixedPrecision` on CUDA. SEM: `SEMMixup(mix=..., alpha=α, gamma=γ)`, h = the 512-d pooled features
(input of the final Linear), MSE, stop-gradient target. The paper's text that this machine could reach did not state
its exact optimiser/schedule/γ, so these are the brief's and the mixup paper's CIFAR settings — check them against the
paper's supplement before quoting numbers as a reproduction.

Output: one row per run appended to `--out` (default benchmarks/results/cifar100_paper.csv): method, γ, α, seed,
split (test, or valid with --valid), accuracy, NLL, ECE, mean CIFAR-100-C accuracy (if given), train seconds, device.
"""
from __future__ import annotations
import argparse, os, pickle, sys, time, warnings
from functools import partial
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)
warnings.filterwarnings('ignore', message='IProgress not found')

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from fastai.basics import (Learner, DataLoaders, CrossEntropyLossFlat, Transform, TensorImage, TensorCategory, IntToFloatTensor, Normalize,
                           SGD, CancelFitException, Callback, accuracy, set_seed, store_attr)
from fastai.callback.schedule import ParamScheduler, SchedCos
from fastai.callback.mixup import MixUp, CutMix
from fastai.callback.fp16 import MixedPrecision
from fastai.data.core import TfmdDL

from fastai_sem.callback import SEMMixup
from fastai_sem.ood import expected_calibration_error

CIFAR100_STATS = ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
METHODS = ('erm', 'mixup', 'cutmix', 'sem-mixup', 'sem-cutmix')
RESULTS = Path(__file__).resolve().parent/'results'

# ---------------------------------------------------------------------------------------------------------
# model

class PreActBlock(nn.Module):
    "Pre-activation basic block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, plus the input (or a 1×1 conv of the activated input)"
    def __init__(self, ni:int, nf:int, stride:int=1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(ni), nn.Conv2d(ni, nf, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(nf), nn.Conv2d(nf, nf, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(ni, nf, 1, stride, bias=False) if stride != 1 or ni != nf else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + short

class PreActResNet18(nn.Module):
    "PreActResNet-18 for 32×32 inputs; h for SEM is the input of `linear` (512-d pooled features)"
    def __init__(self, n_classes:int=100, n_in:int=3, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, widths[0], 3, 1, 1, bias=False)
        layers, ni = [], widths[0]
        for i, (n, nf) in enumerate(zip(blocks, widths)):
            layers.append(nn.Sequential(*[PreActBlock(ni if j == 0 else nf, nf, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]))
            ni = nf
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(ni)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.linear = nn.Linear(ni, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d): nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(self.flatten(self.pool(F.relu(self.bn(x)))))

# ---------------------------------------------------------------------------------------------------------
# data

class ArrayDataset:
    "Items (TensorImage uint8 3×H×W, TensorCategory) from a uint8 array (N,H,W,3) and integer labels"
    def __init__(self, x:np.ndarray, y:np.ndarray):
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.as_tensor(y, dtype=torch.long)
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return TensorImage(self.x[i]), TensorCategory(self.y[i])

class PadCropFlip(Transform):
    "Training batches only: zero-pad by `pad` px, crop a random H×W window per image, flip half the images horizontally"
    split_idx, order = 0, 15          # after IntToFloatTensor (order 10), before Normalize (order 99)
    def __init__(self, pad:int=4): store_attr()
    def encodes(self, x:TensorImage):
        bs, c, H, W = x.shape
        p = self.pad
        xp = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2*p+1, (bs,), device=x.device)
        dx = torch.randint(0, 2*p+1, (bs,), device=x.device)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(bs, c, H, W + 2*p)
        out = xp.gather(2, rows)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(bs, c, H, W)
        out = out.gather(3, cols)
        flip = torch.rand(bs, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
        return TensorImage(out)

def _read_folder(path:Path, classes=None):
    from PIL import Image
    classes = classes or sorted(d.name for d in path.iterdir() if d.is_dir())
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((path/c).iterdir()):
            if f.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp'):
                xs.append(np.asarray(Image.open(f).convert('RGB').resize((32, 32)))); ys.append(i)
    return np.stack(xs), np.array(ys), classes

def load_cifar100(path) -> tuple:
    "(x_train, y_train, x_test, y_test) uint8 (N,32,32,3) and int64 labels from a torchvision CIFAR-100 root or an ImageFolder"
    path = Path(path).expanduser()
    py = next((p for p in (path/'cifar-100-python', path) if (p/'train').is_file() and (p/'test').is_file()), None)
    if py is not None:
        def read(split):
            with open(py/split, 'rb') as f: d = pickle.load(f, encoding='latin1')
            return d['data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8), np.array(d['fine_labels'])
        return (*read('train'), *read('test'))
    test_dir = next((path/d for d in ('test', 'valid', 'val') if (path/d).is_dir()), None)
    if (path/'train').is_dir() and test_dir is not None:
        xtr, ytr, classes = _read_folder(path/'train')
        xte, yte, _ = _read_folder(test_dir, classes)
        return xtr, ytr, xte, yte
    raise SystemExit(f"--data {path}: expected a torchvision CIFAR-100 root (with cifar-100-python/train and /test) "
                     "or an ImageFolder with train/ and test/ (or valid/) sub-folders")

def cifar_dls(xtr, ytr, xte, yte, bs=128, device=None, num_workers=0, seed=0) -> DataLoaders:
    "fastai DataLoaders: uint8 arrays → float, crop/flip on training batches, CIFAR-100 normalisation"
    after = [IntToFloatTensor(), PadCropFlip(4), Normalize.from_stats(*CIFAR100_STATS, cuda=False)]
    train = TfmdDL(ArrayDataset(xtr, ytr), bs=bs, shuffle=True, drop_last=True, after_batch=after, device=device, num_workers=num_workers)
    valid = TfmdDL(ArrayDataset(xte, yte), bs=2*bs, shuffle=False, after_batch=after, device=device, num_workers=num_workers)
    train.rng.seed(seed)
    return DataLoaders(train, valid, device=device)

# ---------------------------------------------------------------------------------------------------------
# training

def method_cbs(method:str, gamma:float, alpha:float):
    if method == 'erm': return []
    if method == 'mixup': return [MixUp(alpha)]
    if method == 'cutmix': return [CutMix(alpha)]
    return [SEMMixup(alpha=alpha, gamma=gamma, mix=method.split('-')[1])]

def lr_schedule(name:str, lr:float, epochs:int):
    "The lr as a function of training progress `pos` in [0, 1]"
    if name == 'step': return lambda pos: lr * 0.1 ** ((pos >= 100/200) + (pos >= 150/200))
    if name == 'cosine': return SchedCos(lr, 0.)
    raise ValueError(name)

def make_learner(dls, args, device):
    set_seed(args.seed, reproducible=False)
    opt = partial(SGD, mom=0.9, wd=args.wd, decouple_wd=False)
    learn = Learner(dls, PreActResNet18(100), loss_func=CrossEntropyLossFlat(), opt_func=opt, metrics=accuracy,
                    cbs=method_cbs(args.method, args.gamma, args.alpha), wd_bn_bias=True)
    if device.type == 'cuda': learn.add_cb(MixedPrecision())
    return learn

def fit(learn, args, extra_cbs=()):
    if args.schedule == 'one_cycle': learn.fit_one_cycle(args.epochs, args.lr, cbs=list(extra_cbs))
    else: learn.fit(args.epochs, args.lr, cbs=[ParamScheduler({'lr': lr_schedule(args.schedule, args.lr, args.epochs)}), *extra_cbs])

def evaluate(learn, dls, cifar100c=None):
    preds, targs = learn.get_preds(dl=dls.valid)
    res = dict(accuracy=float((preds.argmax(1) == targs).float().mean()),
               nll=float(F.nll_loss(preds.clamp_min(1e-12).log(), targs)),
               ece=expected_calibration_error(preds, targs))
    if cifar100c:
        root = Path(cifar100c).expanduser()
        labels = np.load(root/'labels.npy')
        accs = []
        for f in sorted(root.glob('*.npy')):
            if f.name == 'labels.npy': continue
            x = np.load(f)
            dl = cifar_dls(x[:1], labels[:1], x, labels, bs=dls.valid.bs // 2, device=dls.device).valid
            p, t = learn.get_preds(dl=dl)
            accs.append(float((p.argmax(1) == t).float().mean()))
        res['cifar100c_acc'] = float(np.mean(accs))
    return res

class StopAfterFirstBatch(Callback):
    "Dry run: stop the fit after the first training step and record what happened"
    order = 99
    def after_step(self):
        self.first_loss = float(self.learn.loss)
        self.shapes = (tuple(self.xb[0].shape), tuple(self.yb[0].shape), tuple(self.pred.shape))
        raise CancelFitException()

def dry_run(args):
    "Build everything on random CIFAR-shaped data (uint8 3×32×32, 100 classes) and run up to the first training step on CPU"
    g = np.random.default_rng(0)
    bs = min(args.bs, 16)   # the real batch size of 128 works too; 16 keeps the CPU check to seconds
    xtr = g.integers(0, 256, (4*bs, 32, 32, 3), dtype=np.uint8); ytr = g.integers(0, 100, 4*bs)
    xte = g.integers(0, 256, (2*bs, 32, 32, 3), dtype=np.uint8); yte = g.integers(0, 100, 2*bs)
    device = torch.device('cpu')
    dls = cifar_dls(xtr, ytr, xte, yte, bs=bs, device=device, seed=args.seed)
    xb, yb = dls.train.one_batch()
    assert xb.shape == (bs, 3, 32, 32) and yb.shape == (bs,), (xb.shape, yb.shape)
    learn = make_learner(dls, args, device)
    n_params = sum(p.numel() for p in learn.model.parameters())
    stop = StopAfterFirstBatch()
    with learn.no_bar(), learn.no_logging(): fit(learn, args, [stop])
    sem = next((cb for cb in learn.cbs if isinstance(cb, SEMMixup)), None)
    assert np.isfinite(stop.first_loss), stop.first_loss
    print(f"dry run ok: method {args.method}, PreActResNet18 {n_params/1e6:.2f}M parameters, batch x {stop.shapes[0]}, "
          f"y {stop.shapes[1]}, logits {stop.shapes[2]}, first loss {stop.first_loss:.4f}"
          + (f", sem_loss {float(sem.sem_loss):.5f} (γ {sem.gamma:g}, h at '{sem.site.name}' input)" if sem is not None else ''))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, help='torchvision CIFAR-100 root or ImageFolder (train/, test/); no download')
    p.add_argument('--dry-run', action='store_true', help='random CIFAR-shaped tensors on CPU, up to the first training step')
    p.add_argument('--method', default='sem-mixup', choices=METHODS)
    p.add_argument('--gamma', type=float, default=1., help='SEM penalty weight (pick it with --valid, never on test)')
    p.add_argument('--alpha', type=float, default=1., help='Beta(α, α) of MixUp/CutMix λ')
    p.add_argument('--epochs', type=int, default=200)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--wd', type=float, default=5e-4)
    p.add_argument('--schedule', default='step', choices=('step', 'cosine', 'one_cycle'),
                   help='step: lr/10 at 50%% and 75%% of training (epochs 100, 150 of 200)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--valid', type=int, default=0, help='hold out the last N training images and evaluate on them instead of test')
    p.add_argument('--cifar100c', type=Path, default=None, help="folder of Hendrycks' CIFAR-100-C .npy files (optional)")
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    p.add_argument('--out', type=Path, default=RESULTS/'cifar100_paper.csv')
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    if args.dry_run: return dry_run(args)
    if args.data is None: p.error('--data PATH is required (or --dry-run)')
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type != 'cuda': print('warning: no CUDA device; 200 epochs of PreActResNet-18 on CPU take days', file=sys.stderr)
    xtr, ytr, xte, yte = load_cifar100(args.data)
    split = 'test'
    if args.valid:
        xtr, ytr, xte, yte, split = xtr[:-args.valid], ytr[:-args.valid], xtr[-args.valid:], ytr[-args.valid:], 'valid'
    dls = cifar_dls(xtr, ytr, xte, yte, bs=args.bs, device=device, num_workers=args.workers, seed=args.seed)
    learn = make_learner(dls, args, device)
    start = time.perf_counter()
    fit(learn, args)
    train_s = time.perf_counter() - start
    res = evaluate(learn, dls, args.cifar100c if split == 'test' else None)
    import pandas as pd
    row = dict(method=args.method, gamma=args.gamma if args.method.startswith('sem') else np.nan, alpha=args.alpha,
               seed=args.seed, split=split, epochs=args.epochs, bs=args.bs, lr=args.lr, wd=args.wd, schedule=args.schedule,
               **res, train_seconds=round(train_s), device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(args.out, mode='a', header=not args.out.exists(), index=False)
    print(row)

if __name__ == '__main__': main()
