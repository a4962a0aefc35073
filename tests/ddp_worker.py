"""One process of the DDP tests (tests/test_ddp.py): fastai's own distributed path on CPU with the gloo backend.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR   # 2 DDP processes
    python tests/ddp_worker.py OUT_DIR                                                          # 1 process, no DDP

Each process runs every scenario of `SCENARIOS` and writes OUT_DIR/rank{RANK}.json (world size 1: OUT_DIR/single.json)
with, per scenario, the per-step losses of this process, the final weights and the checks made after the fit.

What is replaced, and why:
* `DistributedDL._broadcast` (fastai/distributed.py) puts the index list on `.cuda()` because NCCL only takes CUDA
  tensors; gloo takes CPU tensors, so this worker replaces that one method with the same code minus `.cuda()`
  (fastai's own tests override `DistributedDL` member functions the same way, e.g. `_to_detach`).
* fastai 2.8's `DistributedTrainer` wraps the model with `accelerate.Accelerator` (`prepare(model)`,
  `backward(loss)`), and `fastai.distributed` cannot even be imported without the `accelerate` package. When it is
  not installed, this worker registers a minimal stand-in module `accelerate` that does what Accelerator does in a
  CPU process group: `prepare` wraps the model in `DistributedDataParallel`, `backward` calls `loss.backward()`.
  With accelerate installed, the real one is used. The JSON records which (`accelerate`).
Everything else — `distrib_ctx`, `to_distributed`, `DistributedTrainer`, `DistributedDL` — is fastai's.
"""
import json, os, sys, time, types
from datetime import timedelta
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

WORLD, RANK = int(os.environ.get('WORLD_SIZE', '1')), int(os.environ.get('RANK', '0'))
GLOBAL_BS, N_STEPS, N_CLASSES = 8, 4, 3
LOCAL_BS = GLOBAL_BS // 2   # per process in the 2-process run
torch.set_num_threads(1)


def install_accelerate_stand_in():
    "Register a minimal `accelerate` module if the real one is missing; return which one is used"
    try:
        import accelerate
        return f'accelerate {accelerate.__version__}'
    except ImportError: pass
    mod = types.ModuleType('accelerate')

    @dataclass
    class DistributedDataParallelKwargs:
        "Like accelerate's: extra keyword arguments of `DistributedDataParallel`"
        find_unused_parameters: bool = False
        def to_kwargs(self): return {'find_unused_parameters': self.find_unused_parameters} if self.find_unused_parameters else {}

    class Accelerator:
        "What fastai's DistributedTrainer uses of accelerate.Accelerator, for a CPU (gloo) process group"
        def __init__(self, cpu=False, kwargs_handlers=None, **kwargs):
            if not dist.is_initialized(): dist.init_process_group('gloo', timeout=TIMEOUT)
            self.ddp_kwargs = {}
            for h in kwargs_handlers or []: self.ddp_kwargs.update(h.to_kwargs())
        def prepare(self, model): return nn.parallel.DistributedDataParallel(model, **self.ddp_kwargs)
        def backward(self, loss, **kwargs): loss.backward(**kwargs)

    mod.Accelerator, mod.DistributedDataParallelKwargs, mod.__version__ = Accelerator, DistributedDataParallelKwargs, 'stand-in'
    sys.modules['accelerate'] = mod
    return 'stand-in (accelerate not installed)'


ACCELERATE = install_accelerate_stand_in()
# a collective that one process never joins fails after DDP_TEST_TIMEOUT_S (60) seconds instead of gloo's default 30 min
TIMEOUT = timedelta(seconds=float(os.environ.get('DDP_TEST_TIMEOUT_S', '60')))
if WORLD > 1 and not dist.is_initialized(): dist.init_process_group('gloo', timeout=TIMEOUT)

from accelerate import DistributedDataParallelKwargs   # noqa: E402  (the real one or the stand-in)
from fastai.basics import (CrossEntropyLossFlat, Datasets, ItemGetter, Learner, Callback, SGD, noop,   # noqa: E402
                           rank_distrib, num_distrib)
from fastai.callback.progress import ProgressCallback   # noqa: E402
from fastai.distributed import DistributedDL, DistributedTrainer   # noqa: E402
from fastai_sem.all import SEMMixup, Mixer, MixedBatch, unwrap_model   # noqa: E402


def _broadcast_cpu(self, t, rank):
    "fastai's `DistributedDL._broadcast` without `.cuda()`: gloo broadcasts CPU tensors (NCCL needed CUDA ones)"
    t = torch.LongTensor(t)
    torch.distributed.broadcast(t, rank)
    return t.tolist()


DistributedDL._broadcast = _broadcast_cpu   # the only fastai member replaced (tests only)


class ScheduledMixer(Mixer):
    """MixUp with λ and partners fixed per step, so the 2-process and 1-process runs mix the same global batch.

    Step k draws λ for the 8 samples of the global batch and one permutation of 4 for each half. A DDP process gets
    its half: λ[4r:4r+4] and its permutation (partners within its own 4 samples, which is all it has). The single
    process gets all 8 λ and the two permutations side by side (the second one offset by 4)."""
    def __init__(self): self.step = 0
    def mix(self, x, _):
        g = torch.Generator().manual_seed(1000 + self.step)
        self.step += 1
        lam = 0.5 + 0.5*torch.rand(GLOBAL_BS, generator=g)
        perms = [torch.randperm(LOCAL_BS, generator=g) for _ in range(2)]
        if num_distrib() > 1: lam, perm = lam[RANK*LOCAL_BS:(RANK+1)*LOCAL_BS], perms[RANK]
        else: perm = torch.cat([perms[0], perms[1] + LOCAL_BS])
        assert len(x) == len(lam), f'batch of {len(x)} for {len(lam)} λ'
        return MixedBatch(torch.lerp(x[perm], x, lam.view(-1, 1, 1, 1)), lam, perm)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return list(zip(torch.randn(n, 1, 8, 8, generator=g) + y.float().view(-1, 1, 1, 1), y))


def dls_for_global_batch(world):
    """Unshuffled DataLoaders whose step k is the same global batch of 8 items in both runs.

    DistributedDL gives process r the r-th half of the (here unshuffled) training indices and batches it by the
    loader's batch size: with 32 items and bs=4, step k is items 4k..4k+3 on process 0 and 16+4k..16+4k+3 on
    process 1. The single process (bs=8) gets its items in that order: [4k..4k+3, 16+4k..16+4k+3] for each k."""
    train, valid = data(GLOBAL_BS*N_STEPS, 0), data(GLOBAL_BS, 1)
    if world == 1:
        half = len(train)//2
        train = [train[i] for k in range(N_STEPS) for i in [*range(4*k, 4*k+4), *range(half+4*k, half+4*k+4)]]
    dsets = Datasets(train + valid, tfms=[[ItemGetter(0)], [ItemGetter(1)]],
                     splits=[list(range(len(train))), list(range(len(train), len(train) + len(valid)))])
    return dsets.dataloaders(bs=GLOBAL_BS // world, shuffle=False, drop_last=False, num_workers=0)


def model_without_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))


def model_with_bn():
    from fastai.vision.all import create_head
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(body, nn.Flatten(), create_head(4, N_CLASSES, pool=False, lin_ftrs=[8]))


class Record(Callback):
    "Per training step: this process's loss, label loss and penalty; whether the model was DDP-wrapped"
    order = 60
    def __init__(self): self.steps, self.wrapped = [], []
    def after_loss(self):
        if not self.training: return
        sem = self.learn.sem_mixup
        self.steps.append(dict(loss=self.loss.item(), label=sem.label_loss.item(), sem=sem.sem_loss.item(), bs=len(self.y)))
        self.wrapped.append(isinstance(self.learn.model, nn.parallel.DistributedDataParallel))


class NaNOnRank0(Callback):
    "Make the second training batch of process 0 only NaN (after SEMMixup mixed it), so only that process's loss is not finite"
    order = 60
    def before_batch(self):
        if self.training and self.iter == 1 and rank_distrib() == 0: self.learn.xb = (self.xb[0]*float('nan'),)


def n_hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def run(model, mixer, detach_target=True, shared_batch=False, ddp_kwargs=None, sync_bn=False, cbs=(), standardize='global',
        gamma=0.3, spatial=False, distance='mse'):
    "γ is fixed here, not SEMMixup's default: the penalty must weigh enough for `test_tolerance_discriminates` to see it"
    dls = dls_for_global_batch(num_distrib() or 1)
    rec, sem = Record(), SEMMixup(mix=mixer, gamma=gamma, detach_target=detach_target, shared_batch=shared_batch,
                                  standardize=standardize, spatial=spatial, distance=distance)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=partial(SGD, mom=0.), cbs=[sem, rec, *cbs])
    learn.remove_cb(ProgressCallback); learn.logger = noop
    lf = learn.loss_func
    kw = dict(kwargs_handlers=[DistributedDataParallelKwargs(**ddp_kwargs)]) if ddp_kwargs else {}
    with learn.distrib_ctx(sync_bn=sync_bn, cpu=True, **kw):
        learn.fit(1, 0.1, wd=0.)
    return dict(steps=rec.steps, wrapped=rec.wrapped, site=sem.site.name,
                weights=torch.cat([p.detach().flatten() for p in learn.model.parameters()]).tolist(),
                unwrapped_after=not isinstance(learn.model, nn.parallel.DistributedDataParallel),
                hooks_after=n_hooks(learn.model), loss_func_same=learn.loss_func is lf,
                trainer_removed=not any(isinstance(cb, DistributedTrainer) for cb in learn.cbs))


def run_unsynced(*args, **kwargs):
    "`run` with the penalty's statistics taken per process (what SEM did before it summed them over the processes)"
    import fastai_sem.step as step
    synced, step._trains_with_other_processes = step._trains_with_other_processes, lambda model: False
    try: return run(*args, **kwargs)
    finally: step._trains_with_other_processes = synced


SCENARIOS = {
    # compared with the 1-process run: no BatchNorm, fixed λ/partners per step; the raw penalty, and the scale-free
    # one, whose statistics are summed over the processes
    'equiv': lambda: run(model_without_bn(), ScheduledMixer(), standardize=None),
    'equiv_scale_free': lambda: run(model_without_bn(), ScheduledMixer()),
    'equiv_scale_free_feature': lambda: run(model_without_bn(), ScheduledMixer(), standardize='feature'),
    # the scale-free penalty on the feature map before pooling (its own few-pass path, statistics summed inside it)
    'equiv_spatial': lambda: run(model_without_bn(), ScheduledMixer(), spatial=True),
    # the null-space penalty: its basis comes from the classifier's weights, which DDP keeps equal on every process
    'equiv_nullspace': lambda: run(model_without_bn(), ScheduledMixer(), distance='nullspace'),
    # the same with each process standardising by its own batch's statistics: must differ from 1 process
    'equiv_scale_free_unsynced': lambda: run_unsynced(model_without_bn(), ScheduledMixer()),
    'equiv_detach_false': lambda: run(model_without_bn(), ScheduledMixer(), detach_target=False, standardize=None),
    'equiv_unused_params': lambda: run(model_without_bn(), ScheduledMixer(), detach_target=False, standardize=None,
                                       ddp_kwargs=dict(find_unused_parameters=True)),
    # trains (finite), not compared: BatchNorm normalises per process with sync_bn=False; random MixUp/CutMix
    'bn_mixup': lambda: run(model_with_bn(), 'mixup'),
    'bn_cutmix_detach_false': lambda: run(model_with_bn(), 'cutmix', detach_target=False),
    'bn_shared_batch': lambda: run(model_with_bn(), 'mixup', shared_batch=True),
    # fastai's default sync_bn=True: PyTorch's SyncBatchNorm needs GPU modules (expected to fail on CPU)
    'sync_bn_cpu': lambda: run(model_with_bn(), 'mixup', sync_bn=True),
    # a non-finite loss on one process only: SEMMixup skips that step (CancelBatchException before backward) there
    'nonfinite_one_rank': lambda: run(model_without_bn(), ScheduledMixer(), cbs=[NaNOnRank0()]),
}


def main(out):
    out = Path(out)
    torch.manual_seed(RANK)   # the random mixers draw differently on each process, as in real training
    res = dict(world=num_distrib() or 1, rank=rank_distrib(), accelerate=ACCELERATE, backend=dist.get_backend() if dist.is_initialized() else None)
    names = sys.argv[2:] or list(SCENARIOS)
    for name in names:
        start = time.time()
        try: res[name] = SCENARIOS[name]()
        except Exception as e: res[name] = dict(error=f'{type(e).__name__}: {e}'[:2000])
        res[name]['seconds'] = time.time() - start
    fname = f'rank{RANK}.json' if WORLD > 1 else 'single.json'
    (out/fname).write_text(json.dumps(res))
    if dist.is_initialized() and not any('error' in res[n] for n in names):
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__': main(sys.argv[1])
