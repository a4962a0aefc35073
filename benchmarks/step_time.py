#!/usr/bin/env python
"""Step time, peak memory and mixing-op cost of `SEMMixup` against fastai's `MixUp` and `CutMix`.

    python benchmarks/step_time.py            # the default run (7 min 36 s measured on 2 idle CPU cores)
    python benchmarks/step_time.py --quick    # smoke run (seconds)
    python benchmarks/step_time.py --help

What is timed: whole fastai training steps, run by `Learner.fit` on batches of random tensors held in memory.
A step is the wall time from the first `before_batch` callback to the last `after_batch` callback, so it holds
the mixing, the forward pass, the loss, `after_loss`, the backward pass, the optimizer step and `zero_grad`
(on CUDA the clock synchronizes the device at both ends). Data loading is outside the clock.

Contenders: no mixing (`plain`), fastai `MixUp()`, fastai `CutMix()`, `MixUp + no-grad fwd` (fastai MixUp plus one
forward pass of the clean batch without gradient: the floor that any faithful SEM step pays), and
`SEMMixup(mix=m)` for m in mixup/cutmix in its three modes: default (detach_target=True, one extra no-grad
forward pass), `detach_target=False` (that pass keeps its graph) and `shared_batch=True` (no extra pass); and with
the penalty set explicitly: `raw` (the paper's penalty, `standardize=None`), `scale-free` (`standardize='global'`,
pooled h), `spatial` (`standardize='global', spatial=True`: the feature map before global pooling) and `nullspace`
(`distance='nullspace'`: the scale-free pooled penalty outside the span of the classifier's weight rows).

How: every contender has its own `Learner` (same model initialisation, Adam, lr 1e-3). The contenders run in
rounds, `--steps-per-round` steps each, in a freshly shuffled order every round (A C B … B A C …), so load
from other processes hits all of them alike; the first `--warmup` rounds are not timed. A contender's step
time is the median of its timed steps; its ratio to fastai MixUp is median(contender)/median(MixUp), and the
spread printed with it is the 25–75 % range of the per-round ratios (round medians, paired by round).
On CUDA every contender trains with `MixedPrecision()` and images/s is reported too. On a CPU whose load
average exceeds its core count, `--threads auto` (the default) uses one intra-op thread: with two OpenMP
threads and other processes competing, every parallel op waits for a descheduled sibling, which made steps
several times slower and their times mostly scheduler noise on the 2-core machines this was written on.

CPU time: the clock also reads `time.process_time()` (CPU seconds used by this process). With one intra-op
thread it barely moves when other processes compete for the cores, so on a loaded machine its ratios are the
steadier estimate of what the step costs; wall time is the headline (on CUDA only wall time means anything).

Peak memory: one extra, untimed step per contender after the timed rounds. `peak_step_MB` is the highest
amount of tensor memory allocated during that step *above what was live when it began* (activations saved for
backward, the mixed batch, gradients in flight, temporaries): on CUDA `torch.cuda.max_memory_allocated` minus
`memory_allocated` at the start of the step; on CPU the allocations and frees of PyTorch's CPU allocator during
the step are recorded with `torch.profiler` (`profile_memory=True`) and replayed in time order.
`peak_total_MB` adds this contender's tensors that were live at the step's start (parameters, gradients,
optimizer state, the batch): what `max_memory_allocated` would report if it trained alone on the device.
Memory outside PyTorch's allocator (Python objects, oneDNN scratch space) is not counted.

Mixing op alone: fastai `MixUp.before_batch` / `CutMix.before_batch` (on a stand-in Learner) against
`MixupMixer()(x)` / `CutMixMixer()(x)` on the same batch. fastai's CutMix pastes the box into the batch in
place; our mixer returns a new tensor and leaves `x` alone, so `fastai CutMix + clone` is timed as well.

The penalty alone (skip with `--no-penalty-op`): `sem_penalty` forward and backward in each mode (raw, scale-free,
spatial, nullspace) on the features each configuration's model gives for a random batch (float16 under AMP), the gradient added
to an existing one as in a step; modes in a new random order each round. A mode's extra over the raw penalty, paired
by round, is divided by fastai MixUp's median step of the same run: the target is at most 0.02×.

Parts of a step (`--phases`): CPU time (synchronized wall time on CUDA) from `before_batch` to the start of the
training forward pass (mixing, and SEM's clean pass), the forward, loss + `after_loss`, backward, optimizer step
and `zero_grad` + `after_batch`, median per contender.

Results: a table on stdout, `benchmarks/results/step_time{tag}.csv` (steps), `step_time{tag}_mixing.csv`
(mixing op), `step_time{tag}_penalty.csv` (penalty op), `step_time{tag}_phases.csv` (with --phases),
`step_time{tag}_machine.csv` (machine and versions) and the plot `step_time{tag}.png`.
"""
from __future__ import annotations
import argparse, contextlib, csv, os, platform, random, shlex, sys, time, warnings
from pathlib import Path

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler's C++ log lines off stderr
warnings.filterwarnings('ignore', category=FutureWarning)

import numpy as np
import torch
from torch import nn
import fastai
from fastai.basics import *
from fastai.callback.mixup import MixUp, CutMix
from fastai.callback.fp16 import MixedPrecision
from fastprogress.fastprogress import progress_bar
import fastai_sem
from fastai_sem.callback import SEMMixup
from fastai_sem.mixers import MixupMixer, CutMixMixer
from fastai_sem.features import forward_features
from fastai_sem.step import SEM
from fastai_sem.penalty import sem_penalty, NullSpaceMSE

RESULTS = Path(__file__).resolve().parent/'results'
MODELS = ('cnn@28', 'resnet18@32', 'resnet18@64')
CONTENDERS = ('plain', 'fastai MixUp', 'fastai CutMix', 'MixUp + no-grad fwd',
              'SEM mixup', 'SEM mixup detach_target=False', 'SEM mixup shared_batch',
              'SEM cutmix', 'SEM cutmix detach_target=False', 'SEM cutmix shared_batch',
              'SEM mixup raw', 'SEM mixup scale-free', 'SEM mixup spatial', 'SEM mixup nullspace',
              'SEM cutmix raw', 'SEM cutmix scale-free', 'SEM cutmix spatial', 'SEM cutmix nullspace')
# explicit penalty modes, whatever the defaults are: the paper's raw penalty, the scale-free (standardised) pooled one,
# the scale-free spatial one on the feature map before global pooling, and the scale-free pooled one outside the span of
# the classifier's rows (`distance='nullspace'`, which takes a QR decomposition of the classifier's weight every step)
MODES = {'detach_target=False': dict(detach_target=False), 'shared_batch': dict(shared_batch=True),
         'raw': dict(standardize=None, spatial=False), 'scale-free': dict(standardize='global', spatial=False),
         'spatial': dict(standardize='global', spatial=True),
         'nullspace': dict(standardize='global', spatial=False, distance='nullspace')}
REF = 'fastai MixUp'

# ---------------------------------------------------------------------------------------------------------
# models and data

def small_cnn(n_out=10):
    "3 conv layers (stride 2, BatchNorm, ReLU) → global average pool → Linear; 1 input channel (~100k params)"
    def block(ni, nf): return nn.Sequential(nn.Conv2d(ni, nf, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
    return nn.Sequential(block(1, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_out))

def make_model(name):
    "The model `name` ('cnn@28', 'resnet18@32', …) and its input shape (channels, size, size)"
    arch, size = name.split('@'); size = int(size)
    if arch == 'cnn': return small_cnn(), (1, size, size)
    if arch == 'resnet18':
        from torchvision.models import resnet18
        return resnet18(num_classes=10), (3, size, size)
    raise ValueError(f"unknown model {name!r}: use cnn@<px> or resnet18@<px>")

def random_batches(n, bs, shape, device, seed=0):
    "`n` batches of standard-normal images and integer labels in 0..9, already on `device`"
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=g).to(device), torch.randint(0, 10, (bs,), generator=g).to(device))
            for _ in range(n)]

def mem_dls(batches, device):
    "DataLoaders whose training set yields `batches` as they are (no collation, no workers), and no validation set"
    dl = lambda b: DataLoader(b, bs=None, num_workers=0, device=device)
    return DataLoaders(dl(batches), dl([]), device=device)

class NoGradForward(Callback):
    "One more forward pass of the clean batch without gradient: what faithful SEM cannot avoid (with `MixUp`: its floor)"
    order, run_valid = -1, False   # before MixUp (order 0): sees the clean batch
    def before_batch(self):
        # under MixedPrecision's autocast, as SEMMixup's clean pass is (MixedPrecision, order 10, opens it before SEMMixup, 55)
        mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        ac = getattr(mp, 'autocast', None)
        with torch.no_grad(), (ac if ac is not None else contextlib.nullcontext()): self.learn.model(*self.xb)

def contender_cbs(name):
    "The mixing callback(s) of contender `name`"
    if name == 'plain': return []
    if name == 'fastai MixUp': return [MixUp()]
    if name == 'MixUp + no-grad fwd': return [NoGradForward(), MixUp()]
    if name == 'fastai CutMix': return [CutMix()]
    _, mix, *mode = name.split(' ')
    kw = MODES[mode[0]] if mode else {}
    return [SEMMixup(mix=mix, **kw)]

# ---------------------------------------------------------------------------------------------------------
# the clock and the memory probe

def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def _live_bytes(learn, batch):
    "Bytes of the tensors live at the start of a step: parameters, gradients, optimizer state, the batch"
    seen, total = set(), 0
    ts = [p for p in learn.model.parameters()] + [p.grad for p in learn.model.parameters() if p.grad is not None]
    ts += [b for b in learn.model.buffers()] + list(batch)
    if learn.opt is not None:
        for st in learn.opt.state.values(): ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
    for t in ts:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen: continue
        seen.add(key); total += t.untyped_storage().nbytes()
    return total

class _QuietStderr:
    "Send file descriptor 2 to /dev/null (the profiler's C++ start/stop lines), restore it on exit"
    def __enter__(self):
        sys.stderr.flush(); self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 2); os.close(null)
    def __exit__(self, *exc): sys.stderr.flush(); os.dup2(self.saved, 2); os.close(self.saved)

def _peak_from_profile(prof):
    "Highest sum of CPU-allocator bytes allocated minus freed, replaying the profiler's memory events in time order"
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
    evs.sort(key=lambda e: e.start_ns())
    run = peak = 0
    for e in evs: run += e.nbytes(); peak = max(peak, run)
    return peak

class StepClock(Callback):
    "Starts the clock at the first `before_batch` (and stops it at the last `after_batch`, via `StepClockEnd`)"
    order = -1000
    def __init__(self, device): self.device, self.times, self.mem, self.profile, self.prof = device, [], [], False, None
    def before_batch(self):
        if self.profile:   # memory probe (a step of its own, not timed)
            self.live = _live_bytes(self.learn, (*self.xb, *self.yb))
            if self.device.type == 'cuda':   # every contender's model lives on the device: count this one's tensors only
                torch.cuda.synchronize(self.device); torch.cuda.reset_peak_memory_stats(self.device)
                self.cuda0 = torch.cuda.memory_allocated(self.device)
            else:
                self.quiet = _QuietStderr(); self.quiet.__enter__()
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
                self.prof.__enter__()
            return
        _sync(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
    def end(self):
        if self.profile:
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
                step = torch.cuda.max_memory_allocated(self.device) - self.cuda0
                self.mem.append((self.live + step, step))
            else:
                self.prof.__exit__(None, None, None); self.quiet.__exit__()
                step = _peak_from_profile(self.prof); self.prof = None
                self.mem.append((self.live + step, step))
            return
        _sync(self.device)
        self.times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))   # (wall, CPU time of this process)

class StepClockEnd(Callback):
    order = 1000
    def __init__(self, clock): self.clock = clock
    def after_batch(self): self.clock.end()

PHASES = ('before_batch cbs', 'forward', 'loss + after_loss', 'backward', 'opt step', 'zero_grad + after_batch')

class PhaseClock(Callback):
    "With --phases: how long each part of a step takes (CPU time on CPU; wall time, synchronized at every event, on CUDA)"
    order = -999   # first at every event but `before_batch`, where `StepClock` starts first
    def __init__(self, device): self.device, self.steps, self.t, self.hook = device, [], {}, None
    def _now(self):
        if self.device.type == 'cuda': torch.cuda.synchronize(self.device); return time.perf_counter()
        return time.process_time()
    def _fwd(self, *_): self.t['forward'] = self._now()   # the last forward pass that starts is the training one
    def before_fit(self): self.hook = self.learn.model.register_forward_pre_hook(self._fwd)
    def after_fit(self):
        if self.hook is not None: self.hook.remove(); self.hook = None
    def before_batch(self): self.t = {'before_batch': self._now()}
    def after_pred(self): self.t['after_pred'] = self._now()
    def before_backward(self): self.t['before_backward'] = self._now()
    def after_backward(self): self.t['after_backward'] = self._now()
    def before_step(self): self.t['before_step'] = self._now()
    def after_step(self): self.t['after_step'] = self._now()
    def after_batch(self):
        t = self.t; t['after_batch'] = self._now()
        if 'after_step' not in t: return
        self.steps.append((t['forward'] - t['before_batch'], t['after_pred'] - t['forward'], t['before_backward'] - t['after_pred'],
                           t['after_backward'] - t['before_backward'], t['after_step'] - t['before_step'], t['after_batch'] - t['after_step']))

def make_learner(model_name, contender, batches, device, amp, seed=0, phases=False):
    torch.manual_seed(seed)
    model, _ = make_model(model_name)
    clock = StepClock(device)
    clock.phases = PhaseClock(device) if phases else None
    cbs = contender_cbs(contender) + [clock, StepClockEnd(clock)] + ([clock.phases] if phases else []) + ([MixedPrecision()] if amp else [])
    learn = Learner(mem_dls(batches, device), model.to(device), loss_func=CrossEntropyLossFlat(), lr=1e-3, cbs=cbs)
    for cb in [c for c in learn.cbs if type(c).__name__ == 'ProgressCallback']: learn.remove_cb(cb)
    learn.clock = clock
    return learn

# ---------------------------------------------------------------------------------------------------------
# step-time benchmark of one (model, batch size)

def _quantiles(xs, qs=(0.25, 0.5, 0.75)):
    return [float(np.quantile(np.asarray(xs), q)) for q in qs]

def bench_config(model_name, bs, contenders, args, device, amp, budget=None):
    "Rows of results for `model_name` at batch size `bs`; `budget`: seconds for warm-up + timed rounds + memory probe"
    t_start = time.perf_counter()
    _, shape = make_model(model_name)
    k = args.steps_per_round
    shared = random_batches(k, bs, shape, device, seed=args.seed)
    learns = {}
    for c in contenders:   # fastai CutMix writes into its batch: give every contender its own copy
        learns[c] = make_learner(model_name, c, [(x.clone(), y.clone()) for x, y in shared], device, amp, seed=args.seed,
                                 phases=args.phases)
    rng = random.Random(args.seed)
    def one_round(timed):
        order = list(contenders); rng.shuffle(order)
        for c in order:
            learn = learns[c]
            n0, p0 = len(learn.clock.times), len(learn.clock.phases.steps) if learn.clock.phases else 0
            with learn.no_logging(): learn.fit(1)
            if not timed:
                del learn.clock.times[n0:]
                if learn.clock.phases: del learn.clock.phases.steps[p0:]
    t0 = time.perf_counter()
    for _ in range(args.warmup): one_round(False)
    t_round = (time.perf_counter() - t0)/max(args.warmup, 1)
    if args.rounds: n_rounds = args.rounds
    else:   # what is left of the budget, less about one round for the memory probe
        left = budget - (time.perf_counter() - t_start) - (0 if args.no_memory else t_round/k)
        n_rounds = int(min(args.max_rounds, max(args.min_rounds, left/max(t_round, 1e-9))))
    rounds = range(n_rounds)
    for _ in (progress_bar(rounds, leave=False) if sys.stdout.isatty() else rounds): one_round(True)   # no bar frames in a log
    phase_rows = []
    if args.phases:
        for c in contenders:
            ph = np.asarray(learns[c].clock.phases.steps[:n_rounds*k])
            phase_rows.append(dict(model=model_name, bs=bs, contender=c, steps=len(ph),
                                   **{f'{name} ms': float(np.median(ph[:, i]))*1e3 for i, name in enumerate(PHASES)},
                                   **{'sum of medians ms': float(np.median(ph, 0).sum())*1e3},
                                   clock='cpu' if device.type == 'cpu' else 'wall (synchronized)'))

    # memory probe: separate, untimed steps (after the warm-up, so the optimizer state exists)
    if not args.no_memory:
        for c in contenders:
            learn = learns[c]
            learn.clock.profile = True
            learn.dls.train = DataLoader(learn.dls.train.dataset[:1], bs=None, num_workers=0, device=device)
            try:
                with learn.no_logging(): learn.fit(1)
            finally:
                if learn.clock.prof is not None: learn.clock.prof.__exit__(None, None, None); learn.clock.quiet.__exit__()
                learn.clock.profile, learn.clock.prof = False, None

    rows = []
    T = {c: np.asarray(learns[c].clock.times).reshape(n_rounds, k, 2) for c in contenders}   # [round, step, wall|cpu]
    for c in contenders:
        wall, cpu = T[c][..., 0].ravel(), T[c][..., 1].ravel()
        q25, med, q75 = _quantiles(wall)
        row = dict(model=model_name, bs=bs, contender=c, steps=len(wall), median_ms=med*1e3, q25_ms=q25*1e3, q75_ms=q75*1e3,
                   cpu_ms=float(np.median(cpu))*1e3, images_per_s=bs/med)
        for name, ref in (('', REF), ('_same_mixer', {'mixup': 'fastai MixUp', 'cutmix': 'fastai CutMix'}.get(
                c.split(' ')[1] if c.startswith('SEM') else ''))):
            if ref not in T: continue
            for j, kind in ((0, ''), (1, 'cpu_')):
                row[f'{kind}ratio{name}'] = float(np.median(T[c][..., j])/np.median(T[ref][..., j]))
                if not name:   # spread: the per-round ratios (round medians, paired by round)
                    per_round = np.median(T[c][..., j], 1)/np.median(T[ref][..., j], 1)
                    row[f'{kind}ratio_q25'], row[f'{kind}ratio_q75'] = _quantiles(per_round, (0.25, 0.75))
        if learns[c].clock.mem:
            tot, step = max(learns[c].clock.mem)
            row['peak_total_MB'], row['peak_step_MB'] = tot/2**20, step/2**20
        rows.append(row)
    if REF in learns and learns[REF].clock.mem:
        ref = next(r for r in rows if r['contender'] == REF)
        for r in rows:
            r['mem_ratio'] = r['peak_total_MB']/ref['peak_total_MB']
            r['mem_step_ratio'] = r['peak_step_MB']/ref['peak_step_MB']
    for r in rows: r.update(rounds=n_rounds, steps_per_round=k, device=device.type + ('+amp' if amp else ''))
    return rows, phase_rows

# ---------------------------------------------------------------------------------------------------------
# the mixing op alone

class _StandIn:
    "Just enough of a Learner for fastai's MixUp/CutMix `before_batch`"
    def __init__(self, x, y): self.xb, self.yb = (x,), (y,)
    x = property(lambda self: self.xb[0]); y = property(lambda self: self.yb[0])

def time_interleaved(ops, rounds, inner, device, seed, warmup=2):
    "{name: seconds per call, one per timed round}: each round calls every op `inner` times, in a new random order"
    times, rng = {k: [] for k in ops}, random.Random(seed)
    for r in range(rounds + warmup):
        order = list(ops); rng.shuffle(order)
        for name in order:
            _sync(device); t0 = time.perf_counter()
            for _ in range(inner): ops[name]()
            _sync(device)
            if r >= warmup: times[name].append((time.perf_counter() - t0)/inner)
    return times

def bench_mixing(shapes, args, device):
    rows = []
    for bs, shape in shapes:
        x = torch.randn(bs, *shape, device=device); y = torch.randint(0, 10, (bs,), device=device)
        fmix, fcut, fcut2 = MixUp(), CutMix(), CutMix()
        for cb in (fmix, fcut, fcut2): cb.learn, cb.stack_y = _StandIn(x.clone(), y), True   # stack_y: class-index targets
        mm, cm = MixupMixer(), CutMixMixer()
        def f_mixup(): fmix.learn.xb = (x,); fmix.before_batch()      # MixUp replaces learn.xb by a new tensor
        def f_cutmix(): fcut.before_batch()                             # pastes into learn.xb[0] in place
        def f_cutmix_clone(): fcut2.learn.xb = (x.clone(),); fcut2.before_batch()
        ops = {'fastai MixUp.before_batch': f_mixup, 'MixupMixer()(x)': lambda: mm(x),
               'fastai CutMix.before_batch (in place)': f_cutmix, 'fastai CutMix + clone': f_cutmix_clone,
               'CutMixMixer()(x)': lambda: cm(x)}
        times = time_interleaved(ops, args.mix_rounds, args.mix_inner, device, args.seed)
        refs = {'mixup': 'fastai MixUp.before_batch', 'cutmix': 'fastai CutMix.before_batch (in place)'}
        for name, ts in times.items():
            q25, med, q75 = _quantiles(ts)
            ref = times[refs['cutmix' if 'cut' in name.lower() else 'mixup']]
            rows.append(dict(shape='x'.join(map(str, (bs, *shape))), op=name, median_us=med*1e6, q25_us=q25*1e6, q75_us=q75*1e6,
                             min_us=min(ts)*1e6, ratio_vs_fastai=med/np.median(ref), ratio_min_vs_fastai=min(ts)/min(ref),
                             calls=len(ts)*args.mix_inner, device=device.type))
    return rows

# ---------------------------------------------------------------------------------------------------------
# the penalty alone

PENALTY_MODES = ('raw', 'scale-free', 'spatial', 'nullspace')

def bench_penalty(configs, args, device, amp):
    """The penalty alone, forward and backward, per mode, on the features of each configuration's model (under AMP in
    float16, as a training step makes them). The gradient is added to an existing one, as in a step, where it meets the
    label loss's. A mode's cost beyond the raw penalty is what it adds to a step: too small for whole steps to resolve."""
    rows = []
    for m, bs in configs:
        torch.manual_seed(args.seed)
        model, shape = make_model(m); model.to(device).train()
        x = torch.randn(bs, *shape, device=device)
        for mix, mixer in (('mixup', MixupMixer()), ('cutmix', CutMixMixer())):
            mixed = mixer(x)
            ops = {}
            for mode in PENALTY_MODES:
                kw = MODES[mode]
                sem = SEM(model, **kw)   # its site and distance (for 'nullspace', bound to the model's classifier)
                site, dist = sem.site, sem.penalty_distance()
                with torch.no_grad(), torch.autocast(device.type, enabled=amp):
                    h_clean = forward_features(model, site, x, keep_buffers=True)
                    h_mixed = forward_features(model, site, mixed.x, keep_buffers=True).requires_grad_()
                h_mixed.grad = torch.zeros_like(h_mixed)
                ops[mode] = (lambda h_mixed=h_mixed, h_clean=h_clean, std=kw['standardize'], dist=dist:
                             sem_penalty(h_mixed, h_clean, mixed.lam, mixed.perm, dist, mixed.mask, std).backward())
            times = time_interleaved(ops, args.pen_rounds, args.pen_inner, device, args.seed)
            raw = np.median(times['raw'])
            for name, ts in times.items():
                q25, med, q75 = _quantiles(ts)
                # the spread of the difference: per round, paired by round
                extra = np.asarray(ts) - np.asarray(times['raw'])
                rows.append(dict(model=m, bs=bs, mixer=mix, mode=name, median_us=med*1e6, q25_us=q25*1e6, q75_us=q75*1e6,
                                 over_raw_us=(med - raw)*1e6, over_raw_q25_us=np.quantile(extra, 0.25)*1e6,
                                 over_raw_q75_us=np.quantile(extra, 0.75)*1e6, calls=len(ts)*args.pen_inner,
                                 device=device.type + ('+amp' if amp else '')))
    return rows

def _head(spec):
    "'2048x1000' → (2048, 1000): a classifier reading 2048 features into 1000 classes"
    try: n_in, n_out = map(int, spec.lower().split('x'))
    except ValueError: raise ValueError(f"--heads takes <features>x<classes>, e.g. 2048x1000, got {spec!r}") from None
    if not 0 < n_out < n_in: raise ValueError(f"--heads {spec}: the null-space penalty needs more features than classes")
    return n_in, n_out

def bench_heads(heads, args, device):
    """The scale-free penalty on pooled h (bs × features) alone, with `distance='mse'` and 'nullspace', for classifiers of
    the sizes `heads`: the null-space distance takes a QR decomposition of the (classes × features) weight every call"""
    rows = []
    for spec in heads:
        n_in, n_out = _head(spec)
        for bs in args.bs:
            torch.manual_seed(args.seed)
            classifier = nn.Linear(n_in, n_out).to(device)
            mixed = MixupMixer()(torch.randn(bs, 1, 1, 1, device=device))
            h_clean = torch.randn(bs, n_in, device=device)
            h_mixed = torch.randn(bs, n_in, device=device, requires_grad=True)
            h_mixed.grad = torch.zeros_like(h_mixed)
            ops = {name: (lambda dist=dist: sem_penalty(h_mixed, h_clean, mixed.lam, mixed.perm, dist).backward())
                   for name, dist in (('mse', 'mse'), ('nullspace', NullSpaceMSE(classifier)))}
            times = time_interleaved(ops, args.head_rounds, args.head_inner, device, args.seed)
            mse, null = np.median(times['mse']), np.median(times['nullspace'])
            rows.append(dict(features=n_in, classes=n_out, bs=bs, mse_us=mse*1e6, nullspace_us=null*1e6,
                             over_mse_us=(null - mse)*1e6, calls=len(times['mse'])*args.head_inner,
                             device=device.type))
    return rows

def penalty_in_steps(pen_rows, rows):
    "Each mode's cost over the raw penalty in units of fastai MixUp's median step of the same model and batch size"
    ref = {(r['model'], r['bs']): r['median_ms']*1e3 for r in rows if r['contender'] == REF}
    for r in pen_rows:
        step = ref.get((r['model'], r['bs']))
        if step: r.update(mixup_step_us=step, over_raw_x_mixup=r['over_raw_us']/step)
    return pen_rows

# ---------------------------------------------------------------------------------------------------------
# reporting

def machine_info(device, amp):
    cpu = platform.processor() or ''
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    fam = {}
    try:
        for line in open('/proc/cpuinfo'):
            k, _, v = line.partition(':')
            if k.strip() in ('cpu family', 'model') and k.strip() not in fam: fam[k.strip()] = v.strip()
    except OSError: pass
    if fam: cpu += f" (family {fam.get('cpu family', '?')}, model {fam.get('model', '?')})"
    info = dict(cpu=cpu, cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, fastai=fastai.__version__, fastai_sem=getattr(fastai_sem, '__version__', '?'),
                platform=platform.platform(), device=str(device), amp=amp)
    if device.type == 'cuda': info['gpu'] = torch.cuda.get_device_name(device)
    info['fastai_sem_commit'] = _library_commit()
    return info

def _library_commit():
    "The git commit of the fastai_sem package being measured, '+dirty' if its files differ from it ('?' outside git)"
    import subprocess
    pkg = Path(fastai_sem.__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(['git', '-C', str(pkg), *a], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return run('rev-parse', '--short', 'HEAD') + ('+dirty' if run('status', '--porcelain', '--', '.') else '')
    except Exception: return '?'

def print_table(rows):
    hdr = (f"{'model':<12} {'bs':>4} {'contender':<31} {'steps':>5} {'wall ms':>8} {'wall × MixUp [IQR]':>19} {'CPU ms':>8} "
           f"{'CPU × MixUp [IQR]':>19} {'× own':>5} {'img/s':>6} {'peak MB':>8} {'mem×':>5} {'step MB':>8} {'step×':>5}")
    print(hdr); print('-'*len(hdr))
    last = None
    rr = lambda r, k: f"{r[k]:.2f} [{r[k + '_q25']:.2f}-{r[k + '_q75']:.2f}]" if k in r else ''
    for r in rows:
        if last and (r['model'], r['bs']) != last: print()
        last = (r['model'], r['bs'])
        own = f"{r['ratio_same_mixer']:.2f}" if 'ratio_same_mixer' in r else ''
        mem = (f"{r['peak_total_MB']:8.1f} {r.get('mem_ratio', float('nan')):5.2f} {r['peak_step_MB']:8.1f} {r.get('mem_step_ratio', float('nan')):5.2f}"
               if 'peak_total_MB' in r else '')
        print(f"{r['model']:<12} {r['bs']:>4} {r['contender']:<31} {r['steps']:>5} {r['median_ms']:8.1f} {rr(r, 'ratio'):>19} "
              f"{r['cpu_ms']:8.1f} {rr(r, 'cpu_ratio'):>19} {own:>5} {r['images_per_s']:6.0f} {mem}")

def check_targets(rows, mix_rows, pen_rows=()):
    "Lines saying which of the targets each configuration meets (step time: by wall time, CPU time alongside)"
    out = []
    def get(m, bs, c, k):
        return next((r.get(k) for r in rows if (r['model'], r['bs'], r['contender']) == (m, bs, c)), None)
    ok = lambda v, lim: 'ok' if v <= lim else 'MISSED'
    for m, bs in dict.fromkeys((r['model'], r['bs']) for r in rows):
        for mix in ('mixup', 'cutmix'):
            for what, c, lim in ((f'SEM {mix} step', f'SEM {mix}', 1.30), (f'SEM {mix} shared_batch step', f'SEM {mix} shared_batch', 1.05)):
                v, vc = get(m, bs, c, 'ratio'), get(m, bs, c, 'cpu_ratio')
                if v is None: continue
                out.append(f"{m:<12} bs {bs:>3}  {what:<32} wall {v:6.3f}× MixUp {ok(v, lim):<6}  CPU time {vc:6.3f}× {ok(vc, lim):<6}  (target ≤ {lim:.2f}×)")
            v = get(m, bs, f'SEM {mix}', 'mem_ratio')
            if v is not None:
                out.append(f"{m:<12} bs {bs:>3}  {f'SEM {mix} peak memory (total)':<32} {v:6.3f}× MixUp {ok(v, 1.10)}  (target ≤ 1.10×)")
    for r in mix_rows:
        if r['op'] in ('MixupMixer()(x)', 'CutMixMixer()(x)'):
            out.append(f"mixing op {r['shape']:<14} {r['op']:<20} median {r['ratio_vs_fastai']:6.3f}× fastai {ok(r['ratio_vs_fastai'], 1):<6}"
                       f"  best {r['ratio_min_vs_fastai']:6.3f}× {ok(r['ratio_min_vs_fastai'], 1):<6}  (target ≤ 1.00×)")
    for r in pen_rows:
        if r['mode'] != 'raw' and 'over_raw_x_mixup' in r:
            out.append(f"penalty op {r['model']:<12} bs {r['bs']:>3} {r['mixer']:<6} {r['mode']:<10} over raw: {r['over_raw_x_mixup']:+.4f}× "
                       f"a MixUp step {ok(r['over_raw_x_mixup'], 0.02)}  (target ≤ 0.02×)")
    return out

def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, keys); w.writeheader()
        for r in rows: w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})

def plot(rows, path, title, cpu_marks=True):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    configs = list(dict.fromkeys((r['model'], r['bs']) for r in rows))
    conts = [c for c in CONTENDERS if any(r['contender'] == c for r in rows)]
    has_mem = any('mem_ratio' in r for r in rows)
    fig, axs = plt.subplots(1 + has_mem, 1, figsize=(max(8, 1.6*len(configs)), 4.2*(1 + has_mem)), squeeze=False)
    w = 0.8/len(conts)
    cmap = plt.get_cmap('tab10')
    for ai, (key, lo, hi, ylabel, lines) in enumerate([('ratio', 'ratio_q25', 'ratio_q75', 'step time / fastai MixUp', (1.0, 1.05, 1.30)),
                                                      ('mem_ratio', None, None, 'peak memory / fastai MixUp', (1.0, 1.10))][:1 + has_mem]):
        ax = axs[ai, 0]
        for ci, c in enumerate(conts):
            xs, ys, err = [], [], [[], []]
            for gi, cfg in enumerate(configs):
                r = next((r for r in rows if (r['model'], r['bs'], r['contender']) == (*cfg, c)), None)
                if r is None or key not in r: continue
                xs.append(gi + (ci - (len(conts) - 1)/2)*w); ys.append(r[key])
                err[0].append(max(r[key] - r[lo], 0) if lo else 0); err[1].append(max(r[hi] - r[key], 0) if hi else 0)
            ax.bar(xs, ys, w, label=c, color=cmap(ci), yerr=err if lo else None, capsize=2, error_kw=dict(lw=0.8))
            if key == 'ratio' and cpu_marks:   # CPU-time ratio of the same steps
                cy = [r['cpu_ratio'] for cfg in configs for r in rows if (r['model'], r['bs'], r['contender']) == (*cfg, c) and 'cpu_ratio' in r]
                ax.plot(xs, cy, 'kD', ms=3, label='CPU-time ratio' if ci == 0 else None)
        for y, ls in zip(lines, ('-', ':', '--')): ax.axhline(y, color='k', lw=0.8, ls=ls)
        ax.set_xticks(range(len(configs)), [f'{m}\nbs {bs}' for m, bs in configs])
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=8)
    handles, labels = axs[0, 0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == 'CPU-time ratio')   # the CPU-time marker last
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, fontsize=7, ncol=4, loc='lower center', frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(conts) > 4 else 0.04, 1, 1)); fig.savefig(path, dpi=110); plt.close(fig)

# ---------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] + ' Times whole fastai training steps on random data.',
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n', 5)[-1])
    p.add_argument('--models', nargs='+', default=list(MODELS), help="cnn@<px> and/or resnet18@<px> (default: %(default)s)")
    p.add_argument('--bs', nargs='+', type=int, default=[64, 256], help='batch sizes (default: %(default)s)')
    p.add_argument('--contenders', nargs='+', default=list(CONTENDERS), metavar='NAME',
                   help=f"subset of: {', '.join(repr(c) for c in CONTENDERS)} (fastai MixUp is always added: it is the reference)")
    p.add_argument('--rounds', type=int, default=0, help='timed rounds per configuration (0: as many as --budget allows)')
    p.add_argument('--budget', type=float, default=360., help='seconds for the step-time part (warm-up, timed rounds, memory probe) '
                   'of all configurations together, shared out as the run goes, when --rounds is 0 (default: %(default)s)')
    p.add_argument('--min-rounds', type=int, default=3, help='at least this many timed rounds, whatever the budget (default: %(default)s)')
    p.add_argument('--max-rounds', type=int, default=60, help='at most this many timed rounds when --rounds is 0 (default: %(default)s)')
    p.add_argument('--steps-per-round', type=int, default=1, help='steps each contender runs per round, in one fit call (default: %(default)s)')
    p.add_argument('--warmup', type=int, default=1, help='untimed rounds first (default: %(default)s)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory probe')
    p.add_argument('--phases', action='store_true', help='also time the parts of each step (mixing and clean pass, forward, loss, '
                   'backward, optimizer step, zero_grad); writes step_time{tag}_phases.csv')
    p.add_argument('--mix-rounds', type=int, default=100, help='timed rounds of the mixing-op benchmark (default: %(default)s)')
    p.add_argument('--mix-inner', type=int, default=10, help='calls per round and op in the mixing-op benchmark (default: %(default)s)')
    p.add_argument('--no-mixing-op', action='store_true', help='skip the mixing-op benchmark')
    p.add_argument('--pen-rounds', type=int, default=100, help='timed rounds of the penalty-op benchmark (default: %(default)s)')
    p.add_argument('--pen-inner', type=int, default=10, help='calls per round and mode in the penalty-op benchmark (default: %(default)s)')
    p.add_argument('--no-penalty-op', action='store_true', help='skip the penalty-op benchmark')
    p.add_argument('--heads', nargs='+', default=[], metavar='FxC', help="also time the null-space distance alone for classifiers "
                   "of F features and C classes (e.g. 512x10 2048x1000), on random pooled h; writes step_time{tag}_heads.csv")
    p.add_argument('--head-rounds', type=int, default=20, help='timed rounds per head size with --heads (default: %(default)s)')
    p.add_argument('--head-inner', type=int, default=3, help='calls per round and distance with --heads (default: %(default)s)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='auto: CUDA (with AMP) when available')
    p.add_argument('--no-amp', action='store_true', help='on CUDA, train in float32 (default: MixedPrecision)')
    p.add_argument('--threads', default='auto', help="torch.set_num_threads: a number, 0 (torch's default), or auto: torch's default, "
                   "but 1 on a CPU whose 1-minute load average exceeds its core count at the start (default: %(default)s)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='smoke run: cnn@28, bs 64, 3 rounds, small mixing-op run; tag "quick"')
    p.add_argument('--out', type=Path, default=RESULTS, help='folder of the CSV/PNG files (default: benchmarks/results)')
    p.add_argument('--tag', default=None, help='suffix of the file names: step_time_<tag>.csv … (default: none; "quick" with --quick)')
    args = p.parse_args(argv)
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad: p.error(f"unknown contender(s) {bad}; choose from {list(CONTENDERS)}")
    for m in args.models:
        try: make_model(m)
        except (ValueError, IndexError) as e: p.error(str(e))
    for h in args.heads:
        try: _head(h)
        except ValueError as e: p.error(str(e))
    if args.quick:
        args.models, args.bs, args.rounds, args.warmup, args.steps_per_round = ['cnn@28'], [64], 3, 1, 1
        args.mix_rounds, args.mix_inner, args.pen_rounds, args.pen_inner = 5, 5, 5, 5
        if args.tag is None: args.tag = 'quick'
    args.contenders = [c for c in CONTENDERS if c in args.contenders or c == REF]
    return args

def main(argv=None):
    args = parse_args(argv)
    device = torch.device('cuda' if (args.device == 'auto' and torch.cuda.is_available()) or args.device == 'cuda' else 'cpu')
    amp = device.type == 'cuda' and not args.no_amp
    load = os.getloadavg()[0]
    if args.threads == 'auto':   # OpenMP threads that wait on descheduled siblings make a loaded machine's CPU times meaningless
        if device.type == 'cpu' and load > (os.cpu_count() or 1): torch.set_num_threads(1)
    elif int(args.threads): torch.set_num_threads(int(args.threads))
    info = machine_info(device, amp)
    info['load_avg_start'] = round(load, 2)
    print('machine:', ', '.join(f'{k}={v}' for k, v in info.items()))
    if device.type == 'cpu' and info['load_avg_start'] > (os.cpu_count() or 1):
        print(f"warning: load average {info['load_avg_start']:.1f} > {os.cpu_count()} cores: other processes compete for the CPU; "
              "absolute times will be slow and noisy (the interleaving keeps the ratios fair)" +
              (", and only one intra-op thread is used (--threads auto)" if args.threads == 'auto' and torch.get_num_threads() == 1 else ''))
    warnings.filterwarnings('ignore', message='.*SEMMixup skipped.*')
    t_start = time.perf_counter()
    rows, phase_rows, configs = [], [], [(m, bs) for m in args.models for bs in args.bs]
    for i, (m, bs) in enumerate(configs):   # each configuration gets an equal share of what is left of the budget
        t0 = time.perf_counter()
        share = (args.budget - (t0 - t_start))/(len(configs) - i)
        new, new_phases = bench_config(m, bs, args.contenders, args, device, amp, budget=share)
        rows += new; phase_rows += new_phases
        r = rows[-1]
        print(f"  {m} bs {bs}: {r['rounds']} timed rounds × {r['steps_per_round']} step(s) per contender, {time.perf_counter() - t0:.0f} s", flush=True)
    mix_rows = []
    if not args.no_mixing_op:
        shapes = list(dict.fromkeys((bs, make_model(m)[1]) for m in args.models for bs in args.bs))
        mix_rows = bench_mixing(shapes, args, device)
    pen_rows = [] if args.no_penalty_op else penalty_in_steps(bench_penalty(configs, args, device, amp), rows)
    head_rows = bench_heads(args.heads, args, device)
    info['load_avg_end'] = round(os.getloadavg()[0], 2)
    info['wall_s'] = f'{time.perf_counter() - t_start:.0f}'
    info['command'] = shlex.join(['python', 'benchmarks/step_time.py', *(sys.argv[1:] if argv is None else argv)])

    print(f"\nStep time: median over the timed steps of the wall time and of this process's CPU time; '× MixUp' = median/median of "
          f"fastai MixUp [25–75 % of the per-round ratios]; '× own' = wall-time ratio of SEM to the fastai callback with the same "
          f"mixer; device {info['device']}{' + AMP' if amp else ''}")
    print("Peak memory: 'step MB' = peak allocated during one step above what was allocated at its start (" +
          ("torch.cuda.max_memory_allocated" if device.type == 'cuda' else "CPU allocator events replayed from torch.profiler") +
          "); 'peak MB' = 'step MB' + this contender's parameters, gradients, optimizer state and batch")
    print_table(rows)
    if mix_rows:
        print("\nMixing op alone (per call, µs: median [25-75 %] and best round; ratios against the fastai callback with the same mixer)")
        print(f"  {'batch':<14} {'op':<38} {'median':>9} {'[IQR]':>17} {'best':>8} {'ratio':>6} {'best ratio':>10}")
        for r in mix_rows:
            print(f"  {r['shape']:<14} {r['op']:<38} {r['median_us']:9.1f} {'['+format(r['q25_us'],'.1f')+'-'+format(r['q75_us'],'.1f')+']':>17} "
                  f"{r['min_us']:8.1f} {r['ratio_vs_fastai']:5.2f}× {r['ratio_min_vs_fastai']:9.2f}×")
    if pen_rows:
        print("\nThe penalty alone, forward and backward (per call, µs: median [25-75 %]); the extra over the raw penalty, "
              "paired by round, and that extra in units of one fastai MixUp step (median) of the same model and batch")
        print(f"  {'model':<12} {'bs':>4} {'mixer':<7} {'mode':<11} {'median':>9} {'[IQR]':>17} {'over raw':>9} {'[IQR]':>17} {'× MixUp step':>12}")
        for r in pen_rows:
            iqr = lambda a, b: f"[{r[a]:.1f}-{r[b]:.1f}]"
            x = f"{r['over_raw_x_mixup']:+.4f}" if 'over_raw_x_mixup' in r else ''
            print(f"  {r['model']:<12} {r['bs']:>4} {r['mixer']:<7} {r['mode']:<11} {r['median_us']:9.1f} {iqr('q25_us', 'q75_us'):>17} "
                  f"{r['over_raw_us']:+9.1f} {iqr('over_raw_q25_us', 'over_raw_q75_us'):>17} {x:>12}")
    if head_rows:
        print("\nThe null-space distance alone by classifier size: the scale-free penalty on random pooled h, forward and "
              "backward, with distance='mse' and 'nullspace' (per call, µs: medians)")
        print(f"  {'features':>8} {'classes':>7} {'bs':>4} {'mse':>9} {'nullspace':>10} {'extra':>10}")
        for r in head_rows:
            print(f"  {r['features']:>8} {r['classes']:>7} {r['bs']:>4} {r['mse_us']:9.1f} {r['nullspace_us']:10.1f} {r['over_mse_us']:+10.1f}")
    if phase_rows:
        print(f"\nParts of a step (median ms of {'CPU' if device.type == 'cpu' else 'synchronized wall'} time; "
              "'before_batch cbs' holds the mixing and SEM's clean pass)")
        print(f"{'model':<12} {'bs':>4} {'contender':<31}" + ''.join(f'{p:>{max(len(p), 8) + 1}}' for p in PHASES) + f"{'sum':>9}")
        for r in phase_rows:
            print(f"{r['model']:<12} {r['bs']:>4} {r['contender']:<31}" +
                  ''.join(f"{r[p + ' ms']:{max(len(p), 8) + 1}.1f}" for p in PHASES) + f"{r['sum of medians ms']:9.1f}")
    print('\nTargets:'); print('\n'.join('  ' + l for l in check_targets(rows, mix_rows, pen_rows)))
    print(f"\n1-minute load average at start / end: {info['load_avg_start']:.2f} / {info['load_avg_end']:.2f}; "
          f"{info['torch_threads']} torch thread(s); wall {info['wall_s']} s")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = 'step_time' + (f'_{args.tag}' if args.tag else '')
    written = [(args.out/f'{stem}{part}.csv', data) for part, data in (('', rows), ('_mixing', mix_rows), ('_penalty', pen_rows), ('_heads', head_rows), ('_phases', phase_rows),
               ('_machine', [dict(key=k, value=v) for k, v in info.items()])) if data]
    for path, data in written: write_csv(path, data)
    plot(rows, args.out/f'{stem}.png', f"{info.get('gpu', info['cpu'])}, {info['cpu_cores']} cores, {info['torch_threads']} torch thread(s), "
         f"{info['device']}{' + AMP' if amp else ''}, torch {info['torch']}, fastai {info['fastai']}\n"
         "bars: median step wall time (top), peak memory (bottom) / fastai MixUp's; whiskers: per-round 25–75 %" +
         ("; ◆: CPU-time ratio" if device.type == 'cpu' else ''), cpu_marks=device.type == 'cpu')
    print('wrote', *(str(p) for p, _ in written), args.out/f'{stem}.png')
    return rows, mix_rows, phase_rows, pen_rows

if __name__ == '__main__': main()
