"""SEMMixup under DistributedDataParallel: fastai's own distributed path, 2 CPU processes, gloo backend.

`tests/ddp_worker.py` is launched with `torchrun --nproc_per_node=2` (as `python -m torch.distributed.run`, the same
program) and once without torchrun (one process, no DDP). Its docstring says what it replaces to run on CPU.

Equivalence ("same global batch"). Each DDP process trains on 4 of the 8 items of a step, and DDP averages the
gradients of the two processes. Both the label loss and the penalty (MSE) of a process are means over its 4 samples
(and over the same number of feature elements), so the average of the two processes' losses is the mean over all 8
— the loss of one process that sees the same 8 items (the scale-free penalty too: its standardising statistics
are summed over the processes, and `test_scale_free_needs_summed_statistics` checks that per-process ones differ), if
* each process's half of the global batch is the same 8 items as the single process's batch (unshuffled loaders,
  ordered accordingly: `dls_for_global_batch`);
* the mixing is the same: λ fixed per step and sample, partners drawn within each half (a DDP process only has its
  own 4 samples) and the same pairs, offset by 4, in the single process (`ScheduledMixer`);
* no BatchNorm: with sync_bn=False each process normalises with its own 4 samples' statistics (and sync_bn=True
  needs GPUs), and no dropout.
Then the weights follow the same path (plain SGD, lr 0.1, no weight decay, 4 steps), and at every step the mean of the
two processes' losses equals the single process's loss.

Tolerance: rel 5e-6 / abs 1e-7 (numpy's assert_allclose). The runs differ only in float32 summation order (two means
of 4 then an averaging all-reduce vs one mean of 8), about one ulp per step: measured at most 1.2e-7 on losses of
about 1.1 (the tolerance there is ~5.8e-6, ~50× that), 9e-11 on penalties of ~1e-4 and 3e-8 on the weights after
4 steps. A real mismatch is much larger: the same schedule with detach_target=False differs from detach_target=True
by ~5e-4 in the loss from step 2 on (~90× the tolerance), which `test_tolerance_discriminates` checks.
"""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'ddp_worker.py'
EQUIV = ['equiv', 'equiv_detach_false', 'equiv_unused_params', 'equiv_scale_free', 'equiv_scale_free_feature', 'equiv_spatial',
         'equiv_nullspace']
TRAINS = ['bn_mixup', 'bn_cutmix_detach_false', 'bn_shared_batch']
RTOL, ATOL = 5e-6, 1e-7


def _run(cmd, check=True, timeout=300, **env):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **env,
           'PYTHONPATH': os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get('PYTHONPATH')]))}
    for k in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'): env.pop(k, None)
    p = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=timeout)
    if check: assert p.returncode == 0, f'{" ".join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}'
    return p


def torchrun(out, *scenarios, **kw):
    return _run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(WORKER), str(out),
                 *scenarios], **kw)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available(): pytest.skip('torch.distributed with gloo is not available')
    out = tmp_path_factory.mktemp('ddp')
    torchrun(out, *EQUIV, 'equiv_scale_free_unsynced', *TRAINS, 'sync_bn_cpu')
    _run([sys.executable, str(WORKER), str(out), *EQUIV])
    return [json.loads((out/f).read_text()) for f in ('rank0.json', 'rank1.json', 'single.json')]


def test_launch(results):
    r0, r1, single = results
    assert (r0['world'], r0['rank'], r1['rank'], r0['backend']) == (2, 0, 1, 'gloo')
    assert single['world'] == 1 and single['backend'] is None
    print('accelerate:', r0['accelerate'])


@pytest.mark.parametrize('name', EQUIV + TRAINS)
def test_trains_under_ddp(results, name):
    "No DDP error (two forward passes before one backward, unused parameters), finite losses, nothing left behind"
    for r in results[:2]:
        res = r[name]
        assert 'error' not in res, res.get('error')
        assert res['wrapped'] == [True]*4                      # every step ran with the DDP-wrapped model
        assert all(s['bs'] == 4 for s in res['steps'])          # each process: its half of the global batch
        assert all(np.isfinite([s['loss'], s['label'], s['sem']]).all() for s in res['steps'])
        assert any(s['sem'] > 0 for s in res['steps'])
        assert res['unwrapped_after'] and res['trainer_removed'] and res['loss_func_same'] and res['hooks_after'] == 0
    assert results[0][name]['site'] == results[1][name]['site']
    # DDP kept the two processes' weights identical
    assert results[0][name]['weights'] == results[1][name]['weights']


@pytest.mark.parametrize('name', EQUIV)
def test_same_as_one_process(results, name):
    r0, r1, single = (r[name] for r in results)
    ref = single['steps']
    assert len(ref) == 4 and all(s['bs'] == 8 for s in ref)
    for k in ('loss', 'label', 'sem'):
        ddp = [(a[k] + b[k]) / 2 for a, b in zip(r0['steps'], r1['steps'])]
        np.testing.assert_allclose(ddp, [s[k] for s in ref], rtol=RTOL, atol=ATOL, err_msg=f'{name}: {k} per step')
    np.testing.assert_allclose(r0['weights'], single['weights'], rtol=RTOL, atol=ATOL, err_msg=f'{name}: final weights')


def test_tolerance_discriminates(results):
    "The tolerance is far tighter than a real difference: detach_target=False vs True on the same schedule"
    a, b = results[2]['equiv']['steps'], results[2]['equiv_detach_false']['steps']
    assert a[0]['loss'] == b[0]['loss']                                   # same weights at step 1
    diff = max(abs(x['loss'] - y['loss']) for x, y in zip(a[1:], b[1:]))
    assert diff > 20 * (ATOL + RTOL * max(abs(x['loss']) for x in a))


def test_scale_free_needs_summed_statistics(results):
    "Standardising by each process's own batch gives a penalty that differs from one process's, far beyond the tolerance"
    single = results[2]['equiv_scale_free']['steps']
    for name in ('equiv_scale_free', 'equiv_scale_free_unsynced'): assert 'error' not in results[0][name], results[0][name]
    ddp = lambda name: [(a['sem'] + b['sem']) / 2 for a, b in zip(results[0][name]['steps'], results[1][name]['steps'])]
    ref = np.array([s['sem'] for s in single])
    np.testing.assert_allclose(ddp('equiv_scale_free'), ref, rtol=RTOL, atol=ATOL)
    assert np.abs(np.array(ddp('equiv_scale_free_unsynced')) - ref).max() > 20 * (ATOL + RTOL * ref.max())


def test_sync_bn_needs_gpu(results):
    "fastai's default distrib_ctx(sync_bn=True) converts BatchNorm to SyncBatchNorm, which PyTorch only runs on GPU"
    for r in results[:2]: assert 'GPU' in r['sync_bn_cpu'].get('error', '')


def test_nonfinite_loss_on_one_process(tmp_path):
    "Process 0's second batch is NaN: every process should skip that step together, and training go on in sync"
    if not dist.is_available() or not dist.is_gloo_available(): pytest.skip('torch.distributed with gloo is not available')
    torchrun(tmp_path, 'nonfinite_one_rank', check=False, DDP_TEST_TIMEOUT_S='15')
    r0, r1 = (json.loads((tmp_path/f'rank{r}.json').read_text())['nonfinite_one_rank'] for r in (0, 1))
    assert 'error' not in r0 and 'error' not in r1, (r0.get('error'), r1.get('error'))
    assert len(r0['steps']) == len(r1['steps']) == 3        # the NaN step skipped on both processes
    assert r0['weights'] == r1['weights'] and np.isfinite(r0['weights']).all()
