"""`SEM`, the step API, in a plain PyTorch loop on real torchvision and timm models.

- The loop trains, and with the same seeds, model and batches it gives the losses `SEMMixup` gives in a `Learner`
  (both seed torch's generator before each batch's mix, so that λ, perm, the CutMix box and dropout agree).
- Under `torch.autocast` (bf16 on the CPU) both passes run in bf16 and the penalty is float32.
- An exception or a KeyboardInterrupt anywhere in a step leaves no hook on the model, and the next step trains.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fastai.basics import SGD, Callback, Learner

from fastai_sem.all import SEM, SEMMixup, sem_penalty
from conftest import n_hooks, params_finite, quiet, synth_dls

BS, SIZE, STEPS, LR = 8, 32, 3, 0.05


def timm_resnet():
    timm = pytest.importorskip('timm')
    return timm.create_model('resnet10t', pretrained=False, num_classes=3)


MODELS = {'torchvision-resnet18': lambda: torchvision.models.resnet18(num_classes=3), 'timm-resnet10t': timm_resnet}
OPTIONS = {'default': {}, 'cutmix-shared_batch': dict(mix='cutmix', shared_batch=True),
           'switch-spatial-gamma3': dict(mix='switch', spatial=True, gamma=3.)}


def dls(): return synth_dls(n=BS*STEPS, bs=BS, n_valid=BS, size=SIZE, channels=3, shuffle=False)


def plain_loop(model, batches, **options):
    "The loop a user writes: SEM, plain SGD; the seed set before each batch's step. Returns (total, label, penalty) rows"
    sem, opt, rows = SEM(model, **options), torch.optim.SGD(model.parameters(), lr=LR), []
    model.train()
    for i, (x, y) in enumerate(batches):
        torch.manual_seed(1000 + i)
        with sem.step(x, y) as step:
            out = step.loss(model(step.x), nn.CrossEntropyLoss())
        out.total.backward(); opt.step(); opt.zero_grad()
        assert n_hooks(model) == 0
        rows.append((out.total.item(), out.label_loss.item(), out.penalty.item()))
    return rows


class SeedEachBatch(Callback):
    "Seed torch's generator before SEMMixup draws the batch's mix (order 0: before SEMMixup), as `plain_loop` does"
    order = 0
    def before_batch(self):
        if self.training: torch.manual_seed(1000 + self.iter)


class LossRows(Callback):
    "(loss, label_loss, sem_loss) of each training batch, after SEMMixup (order 60)"
    order = 60
    def before_fit(self): self.rows = []
    def after_loss(self):
        sem = self.learn.sem_mixup
        if self.training: self.rows.append((self.loss.item(), sem.label_loss.item(), sem.sem_loss.item()))


@pytest.mark.parametrize('options', OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize('build', MODELS.values(), ids=MODELS.keys())
def test_plain_loop_matches_callback(build, options):
    torch.manual_seed(0)
    model = build()
    w0 = [p.detach().clone() for p in model.parameters()]
    d = dls()
    batches = list(d.train)
    assert len(batches) == STEPS
    learn = quiet(Learner(d, copy.deepcopy(model), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, lr=LR,
                          cbs=[SEMMixup(**options), SeedEachBatch(), LossRows()]))
    learn.fit(1, LR)
    rows = plain_loop(model, batches, **options)
    assert all(torch.isfinite(torch.tensor(r)).all() for r in rows)
    assert rows[0][2] > 0                                               # a penalty
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))   # it trained
    assert params_finite(model) and n_hooks(model) == 0
    # the same losses, step after step, and the same weights afterwards
    torch.testing.assert_close(torch.tensor(rows), torch.tensor(learn.loss_rows.rows), rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), learn.model.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BS, 3, SIZE, SIZE, generator=g), torch.randint(0, 3, (BS,), generator=g)


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
@pytest.mark.parametrize('build', MODELS.values(), ids=MODELS.keys())
def test_autocast_bf16_penalty_fp32(build, shared_batch):
    torch.manual_seed(0)
    model = build()
    sem, (x, y) = SEM(model, shared_batch=shared_batch), batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with sem.step(x, y) as step:
            pred = model(step.x)
            h = step.capture.features
            h_clean = h[:BS//2] if shared_batch else step.h_clean
            out = step.loss(pred, F.cross_entropy)
    assert pred.dtype == h.dtype == h_clean.dtype == torch.bfloat16   # both passes ran under the autocast
    assert out.penalty.dtype == torch.float32 and torch.isfinite(out.penalty) and out.penalty > 0
    h_mixed = h[BS//2:] if shared_batch else h
    m = step.mixed
    expected = sem_penalty(h_mixed.float(), h_clean.float().detach(), m.lam, m.perm, mask=m.mask)
    torch.testing.assert_close(out.penalty, expected)   # computed from the bf16 features, in float32
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert n_hooks(model) == 0


class Boom(Exception): pass


def raise_boom(*args, **kwargs): raise Boom()


WHERE = ['before_forward', 'in_forward', 'after_forward', 'in_loss', 'after_loss']


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
@pytest.mark.parametrize('exc', [Boom, KeyboardInterrupt], ids=lambda e: e.__name__)
@pytest.mark.parametrize('where', WHERE)
def test_exception_mid_step_leaves_no_hook(where, exc, shared_batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    sem, (x, y) = SEM(model, shared_batch=shared_batch), batch()
    loss_func = raise_boom if where == 'in_loss' else F.cross_entropy
    raised = False
    try:
        with sem.step(x, y) as step:
            assert n_hooks(model) == 2   # the capture: a hook on h's module and the clean-up hook on the model
            if where == 'before_forward': raise exc()
            handle = model.layer2.register_forward_hook(raise_boom) if where == 'in_forward' else None
            try: pred = model(step.x)
            finally:
                if handle is not None: handle.remove()
            if where == 'after_forward': raise exc()
            out = step.loss(pred, loss_func)
            if where == 'after_loss': raise exc()
    except (Boom, KeyboardInterrupt): raised = True
    assert raised
    assert n_hooks(model) == 0
    with sem.step(x, y) as step:   # the next step trains
        out = step.loss(model(step.x), F.cross_entropy)
    out.total.backward()
    assert torch.isfinite(out.total) and n_hooks(model) == 0


def test_step_without_with_closed_in_finally():
    "Without a `with` block, `close` in a `finally` removes the hooks of a step whose forward never ran"
    model = timm_resnet()
    sem, (x, y) = SEM(model, mix='cutmix'), batch()
    step = sem.step(x, y)
    try: raise KeyboardInterrupt()
    except KeyboardInterrupt: pass
    finally: step.close()
    assert n_hooks(model) == 0
