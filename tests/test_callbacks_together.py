"""SEMMixup next to fastai's other callbacks and training loops.

Mixed precision on CPU: fastai 2.8.12's `MixedPrecision` always builds `torch.autocast('cuda', ...)` and a
`GradScaler('cuda', ...)`. On a machine without CUDA, `MixedPrecision(amp_mode='bf16')` therefore runs, but torch
disables that autocast (with a warning) and everything stays float32: `test_mixed_precision_bf16_on_cpu` checks that
this runs. The bf16 code path itself is tested with `CPUBF16MixedPrecision`, fastai's own callback whose autocast is
`torch.autocast('cpu', torch.bfloat16)` (every other method — `to_float` of the predictions, the disabled scaler's
fake optimizer step — is fastai's).
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from fastai.basics import Callback, CrossEntropyLossFlat, Learner, load_learner, set_seed
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from fastai.callback.training import GradientAccumulation, GradientClip
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from torch.amp import autocast

from fastai_sem.all import SEMMixup
from conftest import DtypeSpy, n_hooks, params_finite, quiet, synth_dls, synth_learner


class CPUBF16MixedPrecision(MixedPrecision):
    "fastai's `MixedPrecision(amp_mode='bf16')` with a CPU autocast instead of its hard-coded 'cuda' one"
    def before_fit(self):
        super().before_fit()
        self.autocast = autocast('cpu', dtype=torch.bfloat16)


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
def test_bf16_autocast_cpu(shared_batch):
    spy = DtypeSpy('cpu')
    learn = synth_learner(cbs=[SEMMixup(shared_batch=shared_batch), CPUBF16MixedPrecision(amp_mode='bf16'), spy], head=True)
    learn.fit(1, 1e-3)
    assert spy.autocast_on
    assert spy.h_mixed == torch.bfloat16 and spy.h_clean == torch.bfloat16   # both passes ran under the same autocast
    assert spy.pred_dtype == torch.float32                                   # fastai's to_float of the predictions
    sem = learn.sem_mixup
    assert sem.sem_loss.dtype == torch.float32 and torch.isfinite(sem.sem_loss) and sem.sem_loss > 0
    assert sem.label_loss.dtype == torch.float32 and torch.isfinite(sem.label_loss)
    assert not torch.is_autocast_enabled('cpu')   # MixedPrecision (order 10) left autocast in after_loss
    assert params_finite(learn.model) and n_hooks(learn.model) == 0
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())


def test_mixed_precision_bf16_on_cpu():
    "fastai's own MixedPrecision(amp_mode='bf16') on a CPU machine: its 'cuda' autocast is disabled, training runs in fp32"
    if torch.cuda.is_available(): pytest.skip('checks the CPU-only behaviour')
    learn = synth_learner(cbs=[SEMMixup(), MixedPrecision(amp_mode='bf16')], head=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # "CUDA is not available. Disabling" from torch.autocast('cuda')
        learn.fit(1, 1e-3)
    sem = learn.sem_mixup
    assert sem.sem_loss.dtype == torch.float32 and torch.isfinite(sem.sem_loss)
    assert n_hooks(learn.model) == 0 and learn.scaler is None   # fastai's after_fit ran


class LossSpy(Callback):
    "What the Learner backpropagates and records, after SEMMixup (order 60)"
    order = 60
    def after_loss(self):
        if self.training: self.ratio, self.loss_seen = (self.loss_grad / self.loss).item(), self.loss.item()


@pytest.mark.parametrize('n_acc', [8, 32])
def test_gradient_accumulation(n_acc):
    "loss_grad = loss·bs/n_acc (fastai's GradientAccumulation factor) while learn.loss stays the full loss"
    spy = LossSpy()
    learn = synth_learner(cbs=[SEMMixup(), GradientAccumulation(n_acc=n_acc), spy], n=32, bs=8)
    learn.fit(1, 1e-3)
    assert spy.ratio == pytest.approx(8 / n_acc)
    sem = learn.sem_mixup
    assert spy.loss_seen == pytest.approx((sem.label_loss + sem.gamma*sem.sem_loss).item(), rel=1e-5)


def test_gradient_accumulation_steps():
    "With n_acc = 2 batches, the optimizer steps every other batch, SEMMixup's loss included"
    class StepCount(Callback):
        order, n = 60, 0
        def after_step(self): self.n += 1
    sc = StepCount()
    learn = synth_learner(cbs=[SEMMixup(), GradientAccumulation(n_acc=16), sc], n=32, bs=8)
    learn.fit(1, 1e-3)
    assert sc.n == 2 and params_finite(learn.model)


def test_channels_last():
    "fastai's `to_channelslast(use_amp=False)` (ChannelsLast: model weights in channels_last) runs on CPU with SEMMixup"
    class FormatSpy(Callback):
        order = 56
        def before_batch(self):
            if self.training: self.mixed_is_4d = self.xb[0].ndim == 4
    learn = quiet(vision_learner(synth_dls(n=8, bs=4, n_valid=4, size=32, channels=3), resnet18, pretrained=False,
                                 n_out=3, loss_func=CrossEntropyLossFlat(), cbs=[SEMMixup(), FormatSpy()]))
    learn.to_channelslast(use_amp=False)
    assert isinstance(learn.channels_last, ChannelsLast) and not hasattr(learn, 'mixed_precision')
    learn.fit(1, 1e-3)
    conv = learn.model[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(learn.sem_mixup.sem_loss) and n_hooks(learn.model) == 0


def test_gradient_clip():
    "GradientClip (order 11, before_step) clips the gradient of the SEM loss"
    class GradNorm(Callback):
        order = 60
        def before_step(self):
            self.norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
    spy = GradNorm()
    learn = synth_learner(cbs=[SEMMixup(gamma=100.), GradientClip(max_norm=1e-3), spy])
    learn.fit(1, 1e-3)
    assert spy.norm <= 1e-3 * 1.001
    assert torch.isfinite(learn.sem_mixup.sem_loss) and n_hooks(learn.model) == 0


@pytest.mark.parametrize('monitor', ['valid_loss', 'sem_loss'])
def test_save_model_callback(tmp_path, monitor):
    smc = SaveModelCallback(monitor=monitor, fname='best')
    learn = synth_learner(cbs=[SEMMixup(), smc], path=tmp_path)
    learn.fit(3, 1e-3)
    idx = list(learn.recorder.metric_names[1:]).index(monitor)
    vals = [v[idx] for v in learn.recorder.values]
    assert smc.best == pytest.approx(min(vals)) and np.isfinite(vals).all()
    assert (tmp_path/'models'/'best.pth').exists()
    assert n_hooks(learn.model) == 0


def test_early_stopping_on_sem_loss():
    "EarlyStoppingCallback can monitor the `sem_loss` column (it runs after SEMMixup adds it to the Recorder)"
    learn = synth_learner(cbs=[SEMMixup(), EarlyStoppingCallback(monitor='sem_loss', min_delta=1e6, patience=1)])
    learn.fit(10, 1e-3)
    assert len(learn.recorder.values) == 2   # no epoch improves by 1e6: stops after patience + 1 epochs
    names = learn.recorder.metric_names
    assert names.count('sem_loss') == 1 and names.count('label_loss') == 1
    assert n_hooks(learn.model) == 0


def test_fine_tune_vision_learner():
    "fine_tune = a frozen fit then an unfrozen one: both train with SEMMixup"
    class Count(Callback):
        order, n, frozen = 60, 0, []
        def after_loss(self):
            if self.training:
                self.n += 1
                self.frozen.append(not self.model[0][0].weight.requires_grad)
    cnt = Count()
    torch.manual_seed(0)
    learn = quiet(vision_learner(synth_dls(n=4, bs=4, n_valid=4, size=32, channels=3), resnet18, pretrained=False,
                                 n_out=3, loss_func=CrossEntropyLossFlat(), cbs=[SEMMixup(), cnt]))
    lf = learn.loss_func
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert cnt.n == 2 and cnt.frozen == [True, False]
    assert len(learn.recorder.values) == 1 and learn.recorder.metric_names.count('sem_loss') == 1
    assert np.isfinite(learn.recorder.values[-1]).all()
    assert learn.loss_func is lf and n_hooks(learn.model) == 0


def test_lr_find(tmp_path):
    learn = synth_learner(cbs=SEMMixup(), head=True, path=tmp_path)
    lf, w0 = learn.loss_func, [p.detach().clone() for p in learn.model.parameters()]
    sug = learn.lr_find(num_it=10, show_plot=False)
    assert sug.valley > 0 and len(learn.recorder.losses) >= 6
    assert all(np.isfinite(float(l)) for l in learn.recorder.losses[:5])
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), w0))
    assert learn.loss_func is lf and n_hooks(learn.model) == 0


def test_fit_one_cycle():
    learn = synth_learner(cbs=SEMMixup(), head=True, n=32)
    learn.fit_one_cycle(2, 1e-2)
    assert len(learn.recorder.values) == 2 and np.isfinite(learn.recorder.values).all()
    lrs = learn.recorder.lrs
    assert max(lrs) == pytest.approx(1e-2, rel=0.05) and lrs[0] < max(lrs) and lrs[-1] < max(lrs)
    assert n_hooks(learn.model) == 0


def test_tta_same_with_and_without():
    "TTA (and get_preds) give the same output whether SEMMixup is attached or not (it only acts in training)"
    learn = synth_learner(cbs=SEMMixup(), head=True)
    learn.fit(1, 1e-3)
    set_seed(1); p1, t1 = learn.tta(n=2)
    preds1, _ = learn.get_preds()
    learn.remove_cb(SEMMixup)
    set_seed(1); p0, t0 = learn.tta(n=2)
    preds0, _ = learn.get_preds()
    assert torch.equal(p1, p0) and torch.equal(t1, t0) and torch.equal(preds1, preds0)
    assert n_hooks(learn.model) == 0


@pytest.mark.parametrize('mixer', [MixUp, CutMix], ids=['MixUp', 'CutMix'])
def test_fastai_mixup_cutmix_rejected(mixer):
    learn = synth_learner(cbs=[SEMMixup(), mixer()])
    with pytest.raises(ValueError, match='MixUp/CutMix'): learn.fit(1, 1e-3)
    assert n_hooks(learn.model) == 0


@pytest.mark.parametrize('mixer', [MixUp, CutMix], ids=['MixUp', 'CutMix'])
def test_fastai_mixup_rejected_leaves_loss_func(mixer):
    """After the error, the user removes MixUp as told: the Learner trains with its own loss function again.
    (fastai's MixHandler swaps `loss_func` in before_train and restores it only in after_train/after_cancel_*: SEMMixup
    must refuse it in before_fit, before the swap, or a ValueError would leave MixUp's loss function in place)"""
    learn = synth_learner(cbs=[SEMMixup(), mixer()])
    lf = learn.loss_func
    with pytest.raises(ValueError, match='MixUp/CutMix'): learn.fit(1, 1e-3)
    learn.remove_cb(mixer)
    assert learn.loss_func is lf
    learn.fit(1, 1e-3)
    assert learn.loss_func is lf and torch.isfinite(learn.sem_mixup.sem_loss)


def test_export_load_learner(tmp_path):
    "With several callbacks attached, export → load_learner → predict"
    learn = synth_learner(cbs=[SEMMixup(mix='switch'), GradientClip()], head=True, path=tmp_path)
    learn.fit(1, 1e-3)
    learn.export(tmp_path/'export.pkl')
    learn2 = load_learner(tmp_path/'export.pkl')
    assert isinstance(learn2.sem_mixup, SEMMixup) and n_hooks(learn2.model) == 0
    x = learn.dls.valid.one_batch()[0]
    learn.model.eval(); learn2.model.eval()
    with torch.no_grad(): assert torch.allclose(learn.model(x), learn2.model(x))
