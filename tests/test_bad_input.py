"""Every invalid argument or input raises a `ValueError` whose message names the argument (or the input).

`CASES` is also what nbs/20_errors.ipynb runs to make its table of error messages: one list, so the table shows
exactly what is tested.
"""
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.basics import CrossEntropyLossFlat, DataLoaders, Datasets, ItemGetter, Learner, MSELossFlat
from fastai.callback.mixup import CutMix, MixUp

from fastai_sem.all import CutMixMixer, MixedBatch, Mixer, MixupMixer, SEMMixup
from conftest import n_hooks, quiet, synth_dls, synth_learner, tiny_cnn


@dataclass
class Case:
    "An invalid argument or input: `code` is run (construction) or described (`build` makes the Learner that fits)"
    argument: str                 # the argument or input that is invalid
    code: str                     # SEMMixup(...) call evaluated as is, or a description of the fit
    contains: str                 # the error message must contain this
    build: Callable = None        # fit cases: () -> Learner whose `fit(1)` must raise

    def run(self):
        "Raise the error; return the Learner (fit cases) so its model can be checked afterwards"
        if self.build is None:
            eval(self.code, {'SEMMixup': SEMMixup, 'MixupMixer': MixupMixer, 'nn': nn, 'nan': math.nan, 'inf': math.inf})
            return None
        learn = self.build()
        self.learn, self.loss_func = learn, learn.loss_func
        learn.fit(1, 1e-3)
        return learn


def ctor(argument, code, contains=None): return Case(argument, code, contains or f'`{argument}`')
def fitting(argument, code, contains, build): return Case(argument, code, contains, build)


# ---- models, data and helpers the fit cases use --------------------------------------------------------------
class UnusedModule(nn.Module):
    "A CNN with a module `unused` that its forward never calls"
    def __init__(self): super().__init__(); self.net, self.unused = tiny_cnn(), nn.Linear(4, 4)
    def forward(self, x): return self.net(x)


class TwiceLinear(nn.Module):
    "Its final Linear runs twice per forward pass"
    def __init__(self): super().__init__(); self.body, self.fc = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(3, 3)
    def forward(self, x): return self.fc(self.fc(self.body(x)))


class TwoInputs(nn.Module):
    def __init__(self): super().__init__(); self.net = tiny_cnn()
    def forward(self, a, b): return self.net(a + b)


class ShapeMixer(Mixer):
    "A Mixer that returns the wrong shape for `what` ('x', 'lam' or 'perm')"
    def __init__(self, what): self.what = what
    def mix(self, x, perm):
        lam = torch.ones(len(x))
        if self.what == 'x': return MixedBatch(x[:, :, :4], lam, perm)
        if self.what == 'lam': return MixedBatch(x, lam[:2], perm)
        return MixedBatch(x, lam, perm[None])


def items_learner(items, n_out=3, loss_func=None, model=None, cbs=None):
    "A Learner on a list of (x, y) items (train = valid), batch size 8"
    dls = DataLoaders.from_dsets(items, items, bs=8, num_workers=0)
    return quiet(Learner(dls, model or tiny_cnn(n_classes=n_out), loss_func=loss_func or CrossEntropyLossFlat(),
                         cbs=cbs or SEMMixup()))


def _tuple_dls(n_x=1, n_y=1):
    "DataLoaders whose batches have `n_x` inputs and `n_y` targets"
    g = torch.Generator().manual_seed(0)
    items = [tuple(torch.randn(1, 8, 8, generator=g) for _ in range(n_x)) + tuple(torch.tensor(i % 3) for _ in range(n_y))
             for i in range(16)]
    dsets = Datasets(items, tfms=[[ItemGetter(i)] for i in range(n_x + n_y)], splits=[range(8), range(8, 16)], n_inp=n_x)
    return dsets.dataloaders(bs=8, num_workers=0)


def loss_without_reduction(pred, targ): return F.cross_entropy(pred, targ)
def loss_per_class(pred, targ, reduction='mean'):
    "With reduction='none' returns one loss per sample *and class*, shape (bs, n_classes)"
    l = F.binary_cross_entropy_with_logits(pred, F.one_hot(targ, pred.shape[1]).float(), reduction='none')
    return l if reduction == 'none' else l.mean()


class TupleMix:
    "A mixing callable that returns a plain tuple (x, lam, perm) instead of a MixedBatch (accepted)"
    def __call__(self, x): return x.flip(0), torch.ones(len(x)), torch.arange(len(x)).flip(0)


class TensorMix:
    "A mixing callable that returns only the mixed images"
    def __call__(self, x): return x.flip(0)


class PermMixer(Mixer):
    "A Mixer whose perm is not a valid index tensor: floats or out of range"
    def __init__(self, bad): self.bad = bad
    def mix(self, x, perm): return MixedBatch(x, torch.ones(len(x)), perm.float() if self.bad == 'float' else perm + len(x))


class LamMixer(Mixer):
    "A Mixer whose lam is outside [0, 1] (or not finite)"
    def __init__(self, value): self.value = value
    def mix(self, x, perm): return MixedBatch(x, torch.full((len(x),), self.value), perm)


def loss_ignoring_reduction(pred, targ, reduction='mean'):
    "Accepts `reduction` but always returns the batch mean"
    return F.cross_entropy(pred, targ)


CASES = [
    ctor('alpha', 'SEMMixup(alpha=0)'),
    ctor('alpha', 'SEMMixup(alpha=-1.)'),
    ctor('alpha', 'SEMMixup(alpha=nan)'),
    ctor('alpha', 'SEMMixup(alpha=inf)'),
    ctor('alpha', "SEMMixup(alpha='0.4')"),
    ctor('alpha', 'SEMMixup(alpha=True)'),
    ctor('alpha', "SEMMixup(mix='cutmix', alpha=0)"),
    ctor('alpha', "SEMMixup(mix='switch', alpha=-2)"),
    ctor('alpha', 'SEMMixup(mix=MixupMixer(), alpha=0.2)'),
    ctor('gamma', 'SEMMixup(gamma=-0.1)'),
    ctor('gamma', 'SEMMixup(gamma=nan)'),
    ctor('gamma', 'SEMMixup(gamma=inf)'),
    ctor('gamma', 'SEMMixup(gamma=True)'),
    ctor('gamma', "SEMMixup(gamma='1')"),
    ctor('mix', "SEMMixup(mix='mixupp')"),
    ctor('mix', "SEMMixup(mix='MixUp')"),
    ctor('mix', 'SEMMixup(mix=3)'),
    ctor('mix', 'SEMMixup(mix=None)'),
    ctor('distance', "SEMMixup(distance='l3')"),
    ctor('distance', "SEMMixup(distance='MSE')"),
    ctor('distance', 'SEMMixup(distance=2)'),
    ctor('distance', 'SEMMixup(distance=None)'),
    ctor('switch_prob', "SEMMixup(mix='switch', switch_prob=1.5)"),
    ctor('switch_prob', "SEMMixup(mix='switch', switch_prob=-0.1)"),
    ctor('switch_prob', "SEMMixup(mix='switch', switch_prob=nan)"),
    ctor('switch_prob', "SEMMixup(mix='switch', switch_prob='0.5')"),
    ctor('switch_prob', "SEMMixup(mix='switch', switch_prob=True)"),
    ctor('switch_prob', 'SEMMixup(switch_prob=1.5)'),
    ctor('switch_prob', "SEMMixup(mix='cutmix', switch_prob=-1)"),
    ctor('layer', 'SEMMixup(layer=3)'),
    ctor('layer', "SEMMixup(layer=['0'])"),
    ctor('layer', 'SEMMixup(layer=nn.Linear)'),
    ctor('detach_target', "SEMMixup(detach_target='yes')"),
    ctor('detach_target', 'SEMMixup(detach_target=1)'),
    ctor('detach_target', 'SEMMixup(detach_target=None)'),
    ctor('shared_batch', "SEMMixup(shared_batch='no')"),
    fitting('layer', "SEMMixup(layer='0.99'): no module of that name", '`layer`',
            lambda: synth_learner(cbs=SEMMixup(layer='0.99'))),
    fitting('layer', 'SEMMixup(layer=nn.Linear(4, 3)): a module that is not part of the model', '`layer`',
            lambda: synth_learner(cbs=SEMMixup(layer=nn.Linear(4, 3)))),
    fitting('layer', "SEMMixup(layer='unused'): a module of the model that its forward never calls", '`layer`',
            lambda: synth_learner(cbs=SEMMixup(layer='unused'), model=UnusedModule())),
    fitting('layer', 'SEMMixup() on a model without nn.Linear (h cannot be found)', '`layer=`',
            lambda: synth_learner(cbs=SEMMixup(), model=nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))),
    fitting('layer', 'SEMMixup() on a model whose final Linear runs twice per forward', 'more than once',
            lambda: synth_learner(cbs=SEMMixup(), model=TwiceLinear())),
    fitting('inputs', 'integer (uint8) images', 'floating-point',
            lambda: items_learner([(torch.randint(0, 255, (1, 8, 8), dtype=torch.uint8), torch.tensor(i % 3)) for i in range(16)])),
    fitting('inputs', 'two input tensors per batch', '2 inputs',
            lambda: quiet(Learner(_tuple_dls(n_x=2), TwoInputs(), loss_func=CrossEntropyLossFlat(), cbs=SEMMixup()))),
    fitting('inputs', "SEMMixup(mix='cutmix') on a batch of vectors (bs, n_features)", 'CutMix needs images',
            lambda: items_learner([(torch.randn(6), torch.tensor(i % 3)) for i in range(16)],
                                  model=nn.Sequential(nn.Linear(6, 3)), cbs=SEMMixup(mix='cutmix'))),
    fitting('targets', 'regression targets, float of shape (bs,)', 'regression',
            lambda: items_learner([(torch.randn(1, 8, 8), torch.randn(())) for _ in range(16)], n_out=1, loss_func=MSELossFlat())),
    fitting('targets', 'regression targets, float of shape (bs, 1)', 'regression',
            lambda: items_learner([(torch.randn(1, 8, 8), torch.randn(1)) for _ in range(16)], n_out=1, loss_func=MSELossFlat())),
    fitting('targets', 'segmentation masks, int of shape (bs, H, W)', 'segmentation',
            lambda: items_learner([(torch.randn(1, 8, 8), torch.randint(0, 3, (8, 8))) for _ in range(16)],
                                  loss_func=CrossEntropyLossFlat(axis=1))),
    fitting('targets', 'two target tensors per batch', 'exactly one target',
            lambda: quiet(Learner(_tuple_dls(n_y=2), tiny_cnn(), loss_func=lambda p, a, b: F.cross_entropy(p, a), cbs=SEMMixup()))),
    fitting('mix', 'a Mixer whose x has the wrong shape', '`mix` returned', lambda: synth_learner(cbs=SEMMixup(mix=ShapeMixer('x')))),
    fitting('mix', 'a Mixer whose lam has the wrong shape', '`mix` returned', lambda: synth_learner(cbs=SEMMixup(mix=ShapeMixer('lam')))),
    fitting('mix', 'a Mixer whose perm has the wrong shape', '`mix` returned', lambda: synth_learner(cbs=SEMMixup(mix=ShapeMixer('perm')))),
    fitting('mix', 'a mixing callable that returns only the mixed images', '`mix`', lambda: synth_learner(cbs=SEMMixup(mix=TensorMix()))),
    fitting('mix', 'a Mixer whose perm is a float tensor', '`mix`', lambda: synth_learner(cbs=SEMMixup(mix=PermMixer('float')))),
    fitting('mix', 'a Mixer whose perm is out of range', '`mix`', lambda: synth_learner(cbs=SEMMixup(mix=PermMixer('range')))),
    fitting('mix', 'a Mixer whose lam is 3 (outside [0, 1])', '`mix`', lambda: synth_learner(cbs=SEMMixup(mix=LamMixer(3.)))),
    fitting('mix', 'a Mixer whose lam is nan', '`mix`', lambda: synth_learner(cbs=SEMMixup(mix=LamMixer(float('nan'))))),
    fitting('distance', 'a distance returning one value per sample instead of a scalar', '`distance`',
            lambda: synth_learner(cbs=SEMMixup(distance=lambda h, t: ((h - t)**2).mean(1)))),
    fitting('loss_func', "a loss function without a `reduction` argument", '`loss_func`',
            lambda: synth_learner(cbs=SEMMixup(), loss_func=loss_without_reduction)),
    fitting('loss_func', "a loss that accepts `reduction` but ignores it (always the batch mean)", '`loss_func`',
            lambda: synth_learner(cbs=SEMMixup(), loss_func=loss_ignoring_reduction)),
    fitting('loss_func', "a loss whose reduction='none' gives shape (bs, n_classes)", '`loss_func`',
            lambda: synth_learner(cbs=SEMMixup(), loss_func=loss_per_class)),
    fitting('cbs', "fastai's MixUp attached too", 'MixUp/CutMix', lambda: synth_learner(cbs=[SEMMixup(), MixUp()])),
    fitting('cbs', "fastai's CutMix attached too", 'MixUp/CutMix', lambda: synth_learner(cbs=[SEMMixup(), CutMix()])),
]


def error_of(case):
    """(exception type name, where it was raised, message) of running `case`; ('no error', '', '') if nothing is raised.
    Where: 'creation' (of SEMMixup), or the fit event in fastai's 'Exception occured in `X` when calling event `Y`'."""
    try: case.run()
    except Exception as e:
        msg, where = str(e), 'creation' if case.build is None else 'fit'
        if msg.startswith('Exception occured in `') and ':\n\t' in msg:   # fastai's wrapper around errors raised in callbacks
            head, msg = msg.split(':\n\t', 1)
            where = head.split('when calling event `')[-1].rstrip('`')
        return type(e).__name__, where, msg
    return 'no error', '', ''


@pytest.mark.parametrize('case', CASES, ids=[c.code for c in CASES])
def test_invalid_raises_value_error(case):
    with pytest.raises(ValueError) as ei: case.run()
    assert case.contains in str(ei.value)
    if case.build is not None:
        model = case.learn.model
        assert n_hooks(model) == 0   # nothing left on the model by the failed fit
        assert case.learn.loss_func is case.loss_func   # nor a swapped loss function (fastai's MixUp swaps it in before_train)


def test_tuple_mixer_accepted():
    "A mixing callable may return a plain (x, lam, perm) tuple instead of a MixedBatch"
    learn = synth_learner(cbs=SEMMixup(mix=TupleMix()))
    learn.fit(1, 1e-3)
    assert torch.equal(learn.sem_mixup.perm, torch.arange(8).flip(0)) and torch.isfinite(learn.sem_mixup.sem_loss)


def test_valid_edge_values_accepted():
    "The boundaries of the valid ranges are accepted"
    for kw in [dict(gamma=0), dict(gamma=0.), dict(alpha=1e-3), dict(mix='switch', switch_prob=0.),
               dict(mix='switch', switch_prob=1), dict(layer='0'), dict(distance=lambda h, t: (h - t).abs().mean()),
               dict(mix=CutMixMixer(alpha=2.))]:
        SEMMixup(**kw)
