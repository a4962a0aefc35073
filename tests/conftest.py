"""Shared fixtures of the pytest suite: tiny synthetic data and tiny models, so every test runs in a few batches.

All data loaders use `num_workers=0`: fastai's `TfmdDL` otherwise starts worker processes for every epoch, which
costs ~0.5 s per fit on these 2-core machines (25× the fit itself).
"""
import importlib.util, os, warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.basics import Callback, CrossEntropyLossFlat, Datasets, ItemGetter, Learner, default_device, noop, set_seed
from fastai.callback.progress import ProgressCallback
from fastai.vision.all import create_head

warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)

# One intra-op thread: on these tiny tensors, 2 OpenMP threads on 2 shared cores spend ~50 ms per BatchNorm call
# spinning when the machine is busy (measured: 2.2 s vs 0.05 s for one exit-path test). Override with
# FASTAI_SEM_TEST_THREADS=n.
torch.set_num_threads(int(os.environ.get('FASTAI_SEM_TEST_THREADS', '1')))

# The suite runs on the CPU on every machine: its tests compare with references computed on the CPU (weights cloned
# before a fit, a plain loop beside a Learner, load_learner's CPU model). fastai would otherwise put every Learner on a
# GPU where there is one. tests/test_cuda.py moves its data and models to the GPU itself.
default_device(False)


def synth_dls(n=16, bs=8, n_classes=3, size=8, channels=1, multi_label=False, drop_last=None, n_valid=None,
              shuffle=True, seed=0):
    """DataLoaders over random `channels`×`size`×`size` images whose class shows in their mean.

    `n` training items (`n // bs` training batches) and `n_valid` (default `bs`) validation items, built with fastai
    `Datasets(list(zip(x, y)), tfms=[[ItemGetter(0)], [ItemGetter(1)]], splits=...)`."""
    n_valid = bs if n_valid is None else n_valid
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n + n_valid,), generator=g)
    x = torch.randn(n + n_valid, channels, size, size, generator=g) + y.float().view(-1, 1, 1, 1)
    if multi_label: y = F.one_hot(y, n_classes).float()
    dsets = Datasets(list(zip(x, y)), tfms=[[ItemGetter(0)], [ItemGetter(1)]],
                     splits=[list(range(n)), list(range(n, n + n_valid))])
    return dsets.dataloaders(bs=bs, num_workers=0, shuffle=shuffle, drop_last=drop_last)


def tiny_cnn(head=False, n_in=1, n_classes=3, bn=True, width=4):
    """A conv body; `head=False`: `nn.Sequential` ending in a Linear; `head=True`: fastai's `create_head`
    (BatchNorm, Dropout, in-place ReLU) like `vision_learner`'s; `bn=False`: no BatchNorm anywhere"""
    body = nn.Sequential(nn.Conv2d(n_in, width, 3, padding=1), *([nn.BatchNorm2d(width)] if bn else []),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    if head: return nn.Sequential(body, nn.Flatten(), create_head(width, n_classes, pool=False, lin_ftrs=[8]))
    return nn.Sequential(body, nn.Flatten(), nn.Linear(width, n_classes))


def quiet(learn):
    "No progress bar and no printed table: the tests read `learn.recorder`"
    if hasattr(learn, 'progress'): learn.remove_cb(ProgressCallback)
    learn.logger = noop
    return learn


def synth_learner(cbs=None, head=False, loss_func=None, model=None, seed=0, path=None, **dls_kw):
    "A quiet `Learner` on `synth_dls(**dls_kw)` with `tiny_cnn(head)` (or `model`), seeded for its weights"
    dls = synth_dls(**dls_kw)
    set_seed(seed)
    learn = Learner(dls, model if model is not None else tiny_cnn(head, n_in=dls.one_batch()[0].shape[1]),
                    loss_func=loss_func or CrossEntropyLossFlat(), cbs=cbs, path=path or '.')
    return quiet(learn)


class DtypeSpy(Callback):
    "After the training forward pass (order 56: after SEMMixup set it up): dtypes of h(x̃), h(x) and the predictions"
    order = 56
    def __init__(self, device_type='cpu'): self.device_type = device_type
    def after_pred(self):
        if not self.training: return
        sem = self.learn.sem_mixup
        self.h_mixed, self.pred_dtype = sem.capture.features.dtype, self.pred.dtype
        self.h_clean = sem.h_clean.dtype if sem.h_clean is not None else self.h_mixed
        self.autocast_on = torch.is_autocast_enabled(self.device_type)
        self.device = sem.capture.features.device.type


def n_hooks(model):
    "Forward hooks and forward pre-hooks on all modules of `model`"
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def params_finite(model): return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture
def make_dls(): return synth_dls


@pytest.fixture
def make_learner(tmp_path):
    "`synth_learner` whose files (lr_find's temporary model, SaveModelCallback) go to a temporary folder"
    return lambda *a, **k: synth_learner(*a, **{'path': tmp_path, **k})


@pytest.fixture
def hooks(): return n_hooks


def load_script(path, name=None):
    "Import the script at `path` (e.g. a benchmark under `benchmarks/`) as a module"
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
