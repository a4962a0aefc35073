"""`SEM` in a PyTorch Lightning `LightningModule`, on the CPU, for a few steps.

The module's `training_step` opens a SEM step around its own forward pass and returns the step's total loss; it
trains (weights change, losses finite and logged), in float32 and in bf16 mixed precision (the penalty stays
float32), leaves no hook on the model, and an exception raised mid-step by the model leaves none either.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fastai_sem.all import SEM
from conftest import n_hooks, params_finite, tiny_cnn

L = pytest.importorskip('lightning')


class LitSEM(L.LightningModule):
    "A classifier trained with SEM: `training_step` is all it takes"
    def __init__(self, **sem_options):
        super().__init__()
        self.net = tiny_cnn(head=True)
        self.sem = SEM(self.net, **sem_options)
        self.dtypes = []   # (prediction, penalty) of each step

    def forward(self, x): return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with self.sem.step(x, y) as step:
            pred = self(step.x)
            out = step.loss(pred, F.cross_entropy)
        self.dtypes.append((pred.dtype, out.penalty.dtype))
        self.log_dict({'label_loss': out.label_loss, 'sem_loss': out.penalty}, on_step=True)
        return out.total

    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n=32, bs=8):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.float().view(-1, 1, 1, 1)
    return DataLoader(TensorDataset(x, y), batch_size=bs)


def trainer(precision='32-true', max_steps=4):
    return L.Trainer(max_steps=max_steps, accelerator='cpu', devices=1, precision=precision, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.parametrize('options', [{}, dict(mix='cutmix', shared_batch=True), dict(mix='switch', spatial=True)],
                         ids=['default', 'cutmix-shared_batch', 'switch-spatial'])
@pytest.mark.parametrize('precision', ['32-true', 'bf16-mixed'])
def test_lightning_trains(precision, options):
    torch.manual_seed(0)
    lit = LitSEM(**options)
    w0 = [p.detach().clone() for p in lit.parameters()]
    t = trainer(precision)
    t.fit(lit, loader())
    assert t.global_step == 4 and len(lit.dtypes) == 4
    pred_dtype = torch.bfloat16 if precision == 'bf16-mixed' else torch.float32
    assert all(d == (pred_dtype, torch.float32) for d in lit.dtypes)   # the penalty is float32 under bf16 autocast too
    for k in ('label_loss', 'sem_loss'): assert torch.isfinite(t.callback_metrics[k])
    assert t.callback_metrics['sem_loss'] > 0
    assert not all(torch.equal(p, q) for p, q in zip(lit.parameters(), w0))
    assert params_finite(lit) and n_hooks(lit) == 0


class Boom(Exception): pass


def test_lightning_exception_mid_step_leaves_no_hook():
    torch.manual_seed(0)
    lit = LitSEM()
    state = {'calls': 0}
    def boom_in_second_mixed_pass(module, inputs, output):   # passes: clean, mixed, clean, mixed
        state['calls'] += 1
        if state['calls'] == 4: raise Boom()
    lit.net[0].register_forward_hook(boom_in_second_mixed_pass)
    with pytest.raises(Boom): trainer().fit(lit, loader())
    assert state['calls'] == 4 and len(lit.dtypes) == 1   # raised mid-step, after one complete step
    assert n_hooks(lit) == 1   # only the test's own hook
    assert params_finite(lit)
