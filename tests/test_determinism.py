"""Same seed → the same training, batch by batch.

SEMMixup draws λ, the partners and the CutMix box from torch's global generator, so fastai's `set_seed` fixes them
together with the weights, the dropout masks and the shuffling. The data loaders have `num_workers=0`.

Shuffling: a fastai `DataLoader` owns a `random.Random`, seeded from Python's `random` when the loader is made and
re-seeded from itself each epoch, so reusing the same `dls` in a second run continues its sequence. Two ways to repeat
a run: call `set_seed` and then make the `dls` (`test_same_seed_same_losses`), or reuse the `dls` and reset each
loader's generator too (`test_same_dls_object`).
"""
import random

import pytest
import torch
from fastai.basics import Callback, CrossEntropyLossFlat, Learner, set_seed

from fastai_sem.all import SEMMixup
from conftest import quiet, synth_dls, tiny_cnn


class Record(Callback):
    "Per training batch: the loss, label loss, penalty, λ, partners and the items of the batch"
    order = 60
    def __init__(self): self.rows = []
    def after_loss(self):
        if not self.training: return
        sem = self.learn.sem_mixup
        self.rows.append(dict(loss=self.loss.item(), label=sem.label_loss.item(), sem=sem.sem_loss.item(),
                              lam=sem.lam.clone(), perm=sem.perm.clone(), y=self.y.clone()))


def run(seed, mix='mixup', shared_batch=False, dls=None, epochs=2):
    "Train `epochs` epochs (4 batches each) from `seed`; the per-batch records"
    set_seed(seed, reproducible=True)
    dls = dls or synth_dls(n=32, bs=8, seed=0)
    rec = Record()
    learn = quiet(Learner(dls, tiny_cnn(head=True), loss_func=CrossEntropyLossFlat(),
                          cbs=[SEMMixup(mix=mix, shared_batch=shared_batch), rec]))
    learn.fit(epochs, 1e-2)
    return rec.rows, [p.detach().clone() for p in learn.model.parameters()]


def same(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(r[k], s[k]) if isinstance(r[k], torch.Tensor) else r[k] == s[k] for k in r) for r, s in zip(a, b))


@pytest.mark.parametrize('mix,shared_batch', [('mixup', False), ('cutmix', False), ('switch', False), ('mixup', True)])
def test_same_seed_same_losses(mix, shared_batch):
    rows1, w1 = run(42, mix, shared_batch)
    rows2, w2 = run(42, mix, shared_batch)
    assert len(rows1) == 8
    assert same(rows1, rows2)   # identical losses, λ, partners and batches, bit for bit
    assert all(torch.equal(p, q) for p, q in zip(w1, w2))
    rows3, _ = run(43, mix, shared_batch)
    assert [r['loss'] for r in rows3] != [r['loss'] for r in rows1]   # and the seed matters


def test_same_dls_object():
    "Reusing one `dls`: `set_seed` alone does not repeat its shuffling; resetting the loaders' generators does"
    dls = synth_dls(n=32, bs=8, seed=0)
    def again():
        for dl in dls.loaders: dl.rng = random.Random(0)
        return run(42, dls=dls)[0]
    first = again()
    assert same(first, again())
    shuffled_on, _ = run(42, dls=dls)   # no reset: the loader's generator has moved on
    assert [r['y'].tolist() for r in shuffled_on] != [r['y'].tolist() for r in first]
