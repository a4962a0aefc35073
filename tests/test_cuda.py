"""SEM on a CUDA device: fastai's `MixedPrecision` (float16 with a `GradScaler`), `torch.autocast('cuda')` in the step
API, the same numbers as on the CPU in float32, and a penalty that never makes the CPU wait for the GPU.

These tests need a CUDA device and are skipped without one (CI has none): run them on a GPU machine with
`pytest tests/test_cuda.py`.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fastai.basics import Callback, CrossEntropyLossFlat, Learner, defaults, set_seed
from fastai.callback.fp16 import MixedPrecision

from fastai_sem.all import SEM, SEMMixup, CutMixMixer, MixupMixer, sem_penalty
from conftest import DtypeSpy, n_hooks, params_finite, quiet, synth_dls, tiny_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.fixture(autouse=True)
def fastai_on_cuda(monkeypatch):
    "conftest pins fastai to the CPU (`defaults.use_cuda = False`, under which fastai moves every batch to the CPU): undo it here"
    monkeypatch.setattr(defaults, 'use_cuda', None)


OPTIONS = {'mixup': {}, 'mixup-shared_batch': dict(shared_batch=True), 'cutmix': dict(mix='cutmix'),
           'cutmix-spatial': dict(mix='cutmix', spatial=True), 'mixup-feature-raw': dict(standardize=None)}


@pytest.mark.parametrize('options', OPTIONS.values(), ids=OPTIONS.keys())
def test_mixed_precision_fp16(options):
    "fastai's MixedPrecision on CUDA (float16 + GradScaler): both passes in float16, a float32 penalty, nothing left behind"
    spy = DtypeSpy('cuda')
    dls = synth_dls(n=32, size=16).to('cuda')
    set_seed(0)
    learn = quiet(Learner(dls, tiny_cnn(head=True), loss_func=CrossEntropyLossFlat(),
                          cbs=[SEMMixup(**options), MixedPrecision(), spy]))
    learn.fit(2, 1e-3)
    assert spy.device == 'cuda' and spy.autocast_on
    assert spy.h_mixed == spy.h_clean == torch.float16   # the clean pass ran under the same autocast
    assert spy.pred_dtype == torch.float32               # fastai's to_float of the predictions
    sem = learn.sem_mixup
    assert sem.sem_loss.dtype == torch.float32 and torch.isfinite(sem.sem_loss) and sem.sem_loss > 0
    assert not torch.is_autocast_enabled('cuda')         # MixedPrecision left autocast in after_loss
    assert all(p.is_cuda for p in learn.model.parameters())
    assert params_finite(learn.model) and n_hooks(learn.model) == 0
    assert all(torch.isfinite(torch.tensor(v)) for v in learn.recorder.values[-1])


class FixedPerm:
    "A mixer's `__call__` with a fixed partner index: `torch.randperm` draws from a different generator on each device"
    def __call__(self, x): return self.mix(x, torch.arange(len(x), device=x.device).roll(1))

class FixedMixup(FixedPerm, MixupMixer): pass
class FixedCutMix(FixedPerm, CutMixMixer): pass

MIXERS = {'mixup': FixedMixup, 'cutmix': FixedCutMix}


def one_step(model, x, y, device, **options):
    "The SEM losses and the gradients of one float32 step of `model` on `device` (λ and the box from the CPU generator)"
    model = model.to(device)
    sem = SEM(model, **options)
    torch.manual_seed(0)   # λ and the CutMix box are drawn on the CPU for both devices
    with sem.step(x.to(device), y.to(device)) as step:
        out = step.loss(model(step.x), F.cross_entropy)
    out.total.backward()
    assert n_hooks(model) == 0
    return [t.detach().cpu() for t in (out.total, out.label_loss, out.penalty)], [p.grad.cpu() for p in model.parameters()]


@pytest.mark.parametrize('spatial', [False, True], ids=['pooled', 'spatial'])
@pytest.mark.parametrize('mix', ['mixup', 'cutmix'])
def test_float32_matches_cpu(mix, spatial):
    "In float32 (TF32 off) the loss, label loss, penalty and gradients on CUDA are the CPU's"
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')   # no TF32 in matrix products
    try:   # nor in convolutions: PyTorch's own CUDA convolutions instead of cuDNN's, which may use TF32
        with torch.backends.cudnn.flags(enabled=False): check_float32_matches_cpu(mix, spatial)
    finally: torch.set_float32_matmul_precision(precision)


def check_float32_matches_cpu(mix, spatial):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
    options = dict(mix=MIXERS[mix](), spatial=spatial)
    cpu_losses, cpu_grads = one_step(copy.deepcopy(model), x, y, 'cpu', **options)
    cuda_losses, cuda_grads = one_step(copy.deepcopy(model), x, y, 'cuda', **options)
    assert cpu_losses[2] > 0
    for name, a, b in zip(('loss', 'label loss', 'penalty'), cuda_losses, cpu_losses):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f'{name}: {m}')
    # per parameter, relative to the gradient's size: elementwise, a few of conv1's 9408 near-zero entries differ by
    # 2e-5 (summation order), which is float32 rounding and not a different computation
    for a, b in zip(cuda_grads, cpu_grads): assert (a - b).norm() <= 1e-3*b.norm() + 1e-7


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_step_api_autocast(dtype):
    "The step API in a plain loop under torch.autocast('cuda') (and a GradScaler for float16): it trains, nothing left behind"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).cuda()
    w0 = [p.detach().clone() for p in model.parameters()]
    sem, opt = SEM(model, mix='cutmix', spatial=True), torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 32, 32, generator=g).cuda(), torch.randint(0, 3, (8,), generator=g).cuda()
        with torch.autocast('cuda', dtype=dtype):
            with sem.step(x, y) as step:
                pred = model(step.x)
                assert pred.dtype == step.capture.features.dtype == step.h_clean.dtype == dtype
                out = step.loss(pred, F.cross_entropy)
        assert out.penalty.dtype == torch.float32 and torch.isfinite(out.penalty) and out.penalty > 0
        scaler.scale(out.total).backward(); scaler.step(opt); scaler.update(); opt.zero_grad()
        assert n_hooks(model) == 0
    assert params_finite(model)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))   # it trained


@pytest.mark.parametrize('standardize', ['global', 'feature', None])
@pytest.mark.parametrize('spatial', [False, True], ids=['pooled', 'spatial'])
def test_penalty_never_waits_for_the_gpu(spatial, standardize):
    "The penalty issues nothing that makes the CPU wait for the GPU (a read-back, a blocking copy to the device)"
    g = torch.Generator().manual_seed(0)
    shape = (8, 16, 4, 4) if spatial else (8, 16)
    h_mixed, h_clean = torch.randn(*shape, generator=g).cuda(), torch.randn(*shape, generator=g).cuda()
    lam, perm = torch.rand(8, generator=g).cuda(), torch.randperm(8, generator=g).cuda()
    mask = torch.ones(1, 1, 16, 16, device='cuda')
    mask[..., 2:9, 5:12] = 0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try: penalty = sem_penalty(h_mixed, h_clean, lam, perm, mask=mask if spatial else None, standardize=standardize)
    finally: torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(penalty) and penalty > 0
