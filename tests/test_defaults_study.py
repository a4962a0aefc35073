"""`benchmarks/defaults_study.py`: its no-harm rule on made-up validation grids, the library's default γ against the
committed evidence, round 4's distances, what rounds 5-34 run, and (slow) every code path of round 3 on tiny sizes."""
import math, statistics, subprocess, sys
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import load_script
from fastai_sem.step import DEFAULT_GAMMA, default_gamma

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'defaults_study.py'
FASHION = Path('/usr/share/datasets/fashion-mnist')
BASE_METRICS = dict(clean_acc=0.90, corruption_acc=0.70, auroc_mnist=0.80, auroc_mnist_energy=0.85, ece=0.03)
CONFIGS = {'small': dict(gamma=.03), 'large': dict(gamma=.1)}


@pytest.fixture(scope='module')
def study(): return load_script(SCRIPT)


def made_up_grid(effects, archs=('cnn', 'resnet18'), noise=0.001):
    """Validation rows of fastai MixUp and of SEM+mixup configurations that differ from it by `effects[config][metric]`
    on every architecture, plus a seed wobble of −noise, 0, +noise (so the paired differences have std `noise`)"""
    rows = []
    for arch in archs:
        for seed in (0, 1, 2):
            key = dict(phase='valid2', arch=arch, seed=seed, epochs=5)
            rows.append(dict(key, method='MixUp', config='base', **BASE_METRICS))
            for config, effect in effects.items():
                rows.append(dict(key, method='SEM+mixup', config=config,
                                 **{k: v + effect.get(k, 0) + noise*(seed - 1) for k, v in BASE_METRICS.items()}))
    return pd.DataFrame(rows)


def test_no_harm_rule_prefers_a_small_gain_to_a_large_gain_that_costs_calibration(study):
    grid = made_up_grid({'small': dict(corruption_acc=0.002), 'large': dict(corruption_acc=0.02, ece=0.02)})
    per_arch, table, chosen = study.select_no_harm(grid, CONFIGS)
    assert chosen['mixup'][0] == 'small'
    assert (per_arch.loc[per_arch.config == 'large', 'harm'].str.contains('ece > 0.01')).all()
    assert (per_arch.loc[per_arch.config == 'small', 'harm'] == '').all()


def test_no_harm_rule_falls_back_to_the_largest_harmless_gamma(study):
    # both a little worse on corruptions, but within the seed noise: no harm, no positive score
    grid = made_up_grid({'small': dict(corruption_acc=-0.0005), 'large': dict(corruption_acc=-0.0005)})
    assert study.select_no_harm(grid, CONFIGS)[2]['mixup'] == ('large', 'no positive score: the largest γ that does no harm')


def test_no_harm_rule_gives_gamma_0_when_everything_does_harm(study):
    # worse by more than the seed noise on clean accuracy (small) and on the energy AUROC (large)
    grid = made_up_grid({'small': dict(clean_acc=-0.002, corruption_acc=0.01), 'large': dict(auroc_mnist_energy=-0.01)})
    per_arch, _, chosen = study.select_no_harm(grid, CONFIGS)
    assert chosen['mixup'][0] is None
    assert set(per_arch.loc[per_arch.config == 'small', 'harm']) == {'clean_acc'}


def test_no_harm_rule_needs_both_architectures(study):
    grid = made_up_grid({'small': dict(corruption_acc=0.002)})
    grid = pd.concat([grid, made_up_grid({'large': dict(corruption_acc=0.02)}, archs=('cnn',))])
    assert study.select_no_harm(grid, CONFIGS)[2]['mixup'][0] == 'small'


@pytest.mark.parametrize('mix,rnd,grid_file', [('mixup', 3, 'defaults_grid2.csv'), ('cutmix', 31, 'defaults_grid31.csv')])
def test_library_defaults_are_what_the_committed_evidence_selects(study, mix, rnd, grid_file):
    "`DEFAULT_GAMMA` must be the no-harm rule's choice on the committed validation grid: MixUp's round 3, CutMix's round 31"
    args = study.parse_args(['--select', '--round', str(rnd)])
    grid = study.own_grid(study.read_all(study.RESULTS / grid_file), args)
    _, _, chosen = study.select_no_harm(grid, study.ROUNDS[rnd]['configs'])
    config = chosen[mix][0]
    settings = dict(study.ROUNDS[rnd]['configs'][config])
    assert DEFAULT_GAMMA[mix] == settings.pop('gamma')
    assert settings == {'standardize': 'global'}   # and SEMMixup's other defaults: the pooled mse penalty
    assert default_gamma(mix) == DEFAULT_GAMMA[mix]


def test_round_3s_test_table_keeps_its_own_cutmix_choice(study):
    "Round 3 chose γ 0 for CutMix; its test table reruns that, not the library's later CutMix default"
    assert [study.make_cbs('SEM+cutmix', 'default', study.ROUNDS[3])[0].gamma,
            study.make_cbs('SEM+mixup', 'default', study.ROUNDS[3])[0].gamma] == [0., default_gamma('mixup')]
    assert study.make_cbs('SEM+cutmix', 'default', study.ROUNDS[20])[0].gamma == default_gamma('cutmix') > 0


def test_classifier_subspace_distances_split_the_mse(study):
    "Round 4's distances: the null-space and row-space parts add up to the mse, and a difference the logits cannot see is all null space"
    import torch, torch.nn.functional as F
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    null, row = study.ClassifierSubspaceMSE('nullspace'), study.ClassifierSubspaceMSE('rowspace')
    for d in (null, row): d.bind(model)
    assert null.linear is model[2]
    h_mixed, target = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.allclose(null(h_mixed, target) + row(h_mixed, target), F.mse_loss(h_mixed, target))
    unseen = torch.randn(5, 8)
    w = model[2].weight.detach()
    unseen -= unseen @ torch.linalg.pinv(w) @ w   # remove what the logits read
    assert torch.allclose(unseen @ w.T, torch.zeros(5, 3), atol=1e-5)
    assert row(target + unseen, target) < 1e-10
    assert torch.allclose(null(target + unseen, target), unseen.square().mean())
    # the library's `distance='nullspace'` is the same arithmetic, so rounds 35 and 36 measured what users get: as a
    # distance to the bit, and as SEM's penalty to float32 rounding (the library divides the standardisation's global
    # scale out of it, as it does for 'mse'; the study's distance gets the standardised features)
    from fastai_sem.penalty import NullSpaceMSE, sem_penalty
    assert torch.equal(NullSpaceMSE(model[2])(h_mixed, target), null(h_mixed, target))
    h_clean, lam, perm = 3*torch.randn(5, 8) + 1, torch.rand(5), torch.randperm(5)
    assert torch.allclose(sem_penalty(h_mixed, h_clean, lam, perm, NullSpaceMSE(model[2])),
                          sem_penalty(h_mixed, h_clean, lam, perm, null), rtol=1e-5)


@pytest.mark.parametrize('rnd', ['4', '5', '7'])
def test_rounds_4_5_and_7_have_no_test_table(study, tmp_path, rnd):
    with pytest.raises(SystemExit, match='no test table'): study.main(['--test', '--round', rnd, '--out-dir', str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_round_6_is_sem_at_gamma_0_on_the_test_set_only(study, tmp_path):
    with pytest.raises(SystemExit, match='no grid'): study.main(['--grid', '--round', '6', '--out-dir', str(tmp_path)])
    runs = study.test_runs(study.parse_args(['--test', '--round', '6', '--archs', 'resnet18']))
    assert {(r['phase'], r['method'], r['config']) for r in runs} == {('test6', 'SEM+mixup', 'default')}
    sem, = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[6])
    assert sem.gamma == 0 and sem.mixer.__class__.__name__ == 'MixupMixer'


def test_round_5_runs_cutmix_only_and_judges_round_3s_cutmix_runs_with_its_own(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '5']))
    assert {r['method'] for r in runs} == {'CutMix', 'SEM+cutmix'}
    sem = {(r['arch'], r['config']) for r in runs if r['method'] == 'SEM+cutmix'}
    round3 = {(a, c) for a in study.ARCHS for c in ('global γ=0.1', 'global γ=0.03')}
    assert sem == round3 | {('cnn', 'spatial γ=0.1'), ('cnn', 'spatial γ=0.03')}
    assert all(study.ROUNDS[5]['configs'][c]['spatial'] for _, c in sem if c.startswith('spatial'))


def test_round_7_trains_the_cnn_4x_as_long_and_the_other_rounds_as_before(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '7']))
    assert {(r['arch'], r['epochs'], r['phase']) for r in runs} == {('cnn', 20, 'valid7')}
    assert {(r['method'], r['config']) for r in runs if r['seed'] == 0} == {
        ('MixUp', 'base'), ('SEM+mixup', 'global γ=0.03'), ('SEM+mixup', 'global γ=0.3'),
        ('SEM+mixup', 'global γ=0.1'), ('SEM+mixup', 'cosine γ=1'),
        ('CutMix', 'base'), ('SEM+cutmix', 'global γ=0.1'), ('SEM+cutmix', 'spatial γ=0.1')}
    for rnd in ('2', '3', '5'):
        assert {(r['arch'], r['epochs']) for r in study.grid_runs(study.parse_args(['--grid', '--round', rnd]))} == {('cnn', 5), ('resnet18', 4)}


def test_rounds_8_and_9_are_the_cnns_test_table_at_20_epochs_with_their_own_runs(study, tmp_path):
    with pytest.raises(SystemExit, match='no grid'): study.main(['--grid', '--round', '8', '--out-dir', str(tmp_path)])
    runs = study.test_runs(study.parse_args(['--test', '--round', '8']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config']) for r in runs} == {
        ('test8', 'cnn', 20, 'MixUp', 'base'), ('test8', 'cnn', 20, 'SEM+mixup', 'default')}
    sem, = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[8])
    assert sem.gamma == default_gamma('mixup')
    runs9 = study.test_runs(study.parse_args(['--test', '--round', '9']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method']) for r in runs9} == {('test9', 'cnn', 20, 'SEM+mixup')}
    sem, = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[9])
    assert sem.gamma == 0


def test_rounds_10_and_11_repeat_rounds_8_and_9_and_record_the_size_of_the_energy_score(study, monkeypatch):
    for rnd, repeated in ((10, 8), (11, 9)):
        runs, before = (study.test_runs(study.parse_args(['--test', '--round', str(r)])) for r in (rnd, repeated))
        assert [dict(r, phase=None) for r in runs] == [dict(r, phase=None) for r in before]   # the same runs
        assert {r['phase'] for r in runs} == {f'test{rnd}'}                                   # into their own files
        (sem,), (sem_before,) = (study.make_cbs('SEM+mixup', 'default', study.ROUNDS[r]) for r in (rnd, repeated))
        assert sem.gamma == sem_before.gamma
        assert study.ROUNDS[rnd].get('logit_stats') and not study.ROUNDS[repeated].get('logit_stats')
    logits = {'test': torch.tensor([[2., 0.], [0., 0.], [3., 1.]]), 'mnist': torch.tensor([[1., 1.], [0., -1.]])}
    monkeypatch.setattr(study.R, 'logits_of', lambda model, dls, x: logits[x])
    stats = study.logit_stats(SimpleNamespace(model=None, dls=None), SimpleNamespace(x_test='test', ood=lambda: 'mnist'))
    for name, l in logits.items():
        energy = [math.log(sum(math.exp(v) for v in row)) for row in l.tolist()]
        top = [max(math.exp(v) for v in row)/sum(math.exp(v) for v in row) for row in l.tolist()]
        assert stats[f'energy_mean_{name}'] == pytest.approx(sum(energy)/len(energy))
        assert stats[f'energy_sd_{name}'] == pytest.approx(statistics.stdev(energy))
        assert stats[f'maxprob_mean_{name}'] == pytest.approx(sum(top)/len(top))


def test_rounds_12_and_13_split_round_10s_penalty_into_its_two_parts(study):
    runs10 = study.test_runs(study.parse_args(['--test', '--round', '10']))
    for rnd, keep in ((12, 'nullspace'), (13, 'rowspace')):
        runs = study.test_runs(study.parse_args(['--test', '--round', str(rnd)]))
        assert [dict(r, phase=None) for r in runs] == [dict(r, phase=None) for r in runs10 if r['method'] == 'SEM+mixup']
        (sem,), (sem10,) = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[rnd]), study.make_cbs('SEM+mixup', 'default', study.ROUNDS[10])
        assert sem.distance.keep == keep and sem.gamma == sem10.gamma and sem.standardize == sem10.standardize
        assert study.ROUNDS[rnd]['logit_stats']


def test_rounds_14_and_15_put_the_null_space_penalty_on_validation_with_mixup_only(study, tmp_path):
    for rnd, archs, epochs in ((14, {'cnn', 'resnet18'}, {'cnn': 5, 'resnet18': 4}), (15, {'cnn'}, {'cnn': 20})):
        with pytest.raises(SystemExit, match='no test table'): study.main(['--test', '--round', str(rnd), '--out-dir', str(tmp_path)])
        runs = study.grid_runs(study.parse_args(['--grid', '--round', str(rnd)]))
        assert {r['arch'] for r in runs} == archs and {r['method'] for r in runs} == {'MixUp', 'SEM+mixup'}
        assert all(r['epochs'] == epochs[r['arch']] for r in runs)
        assert {'nullspace γ=0.03', 'nullspace γ=0.1'} <= {r['config'] for r in runs}
        sem, = study.make_cbs('SEM+mixup', 'nullspace γ=0.1', study.ROUNDS[rnd])
        assert sem.distance.keep == 'nullspace' and sem.gamma == .1 and sem.standardize == 'global'
    # round 3's selection does not see round 14's runs, which share its files
    assert 'nullspace γ=0.03' not in {r['config'] for r in study.grid_runs(study.parse_args(['--grid', '--round', '3']))}


def test_round_16_is_round_15_again_scored_against_two_more_validation_ood_sets(study, monkeypatch):
    runs, runs15 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (16, 15))
    strip = lambda rs: [dict(r, phase=None) for r in rs]
    assert all(r in strip(runs15) for r in strip(runs))                      # runs of round 15 ...
    assert {r['config'] for r in runs} == {'base', 'global γ=0.03', 'nullspace γ=0.03'}
    assert {r['phase'] for r in runs} == {'valid16'} and len(runs) == 9       # ... three seeds each, into their own files
    assert study.ROUNDS[16].get('extra_ood') and not study.ROUNDS[15].get('extra_ood')
    x = study.photo_patches(20, seed=1)
    assert x.shape == (20, 28, 28) and x.dtype == np.uint8 and x.std() > 10
    assert (x == study.photo_patches(20, seed=1)).all() and not (x == study.photo_patches(20, seed=2)).all()
    # validation images that score higher than both OOD sets by both scores: every AUROC is 1
    x_valid = np.zeros((4, 28, 28), np.uint8)
    logits_of = lambda model, dls, x: torch.tensor([[5., 0.]]*len(x)) if x is x_valid else torch.zeros(len(x), 2)
    monkeypatch.setattr(study.R, 'logits_of', logits_of)
    res = study.extra_ood_metrics(SimpleNamespace(model=None, dls=None), SimpleNamespace(x_test=x_valid))
    assert res == {f'auroc_{n}{s}': 1.0 for n in ('photos', 'inverted') for s in ('', '_energy')}

def test_round_17_adds_gamma_0_to_round_16_and_round_18_is_round_3_with_its_ood_sets(study):
    runs16, runs17 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (16, 17))
    assert {r['config'] for r in runs17} == {'base', 'γ=0'} and {r['phase'] for r in runs17} == {'valid16'}
    assert [r for r in runs17 if r['config'] == 'base'] == [r for r in runs16 if r['config'] == 'base']   # shared runs
    sem, = study.make_cbs('SEM+mixup', 'γ=0', study.ROUNDS[17])
    assert sem.gamma == 0 and study.ROUNDS[17].get('extra_ood')
    runs18 = study.grid_runs(study.parse_args(['--grid', '--round', '18']))
    runs3 = study.grid_runs(study.parse_args(['--grid', '--round', '3']))
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    assert {key(r) for r in runs18} - {key(r) for r in runs3} == {(a, 'SEM+mixup', c, s, e) for c in ('nullspace γ=0.03', 'γ=0')
                                                               for a, e in (('cnn', 5), ('resnet18', 4)) for s in (0, 1, 2)}
    assert {r['phase'] for r in runs18} == {'valid18'} and study.ROUNDS[18].get('extra_ood')
    runs19 = study.grid_runs(study.parse_args(['--grid', '--round', '19']))   # the same for CutMix
    assert {(r['method'], r['config']) for r in runs19} == {('CutMix', 'base'), *(('SEM+cutmix', c) for c in ('γ=0', 'global γ=0.03', 'spatial γ=0.03'))}
    assert len(runs19) == 24 and {r['phase'] for r in runs19} == {'valid19'} and study.ROUNDS[19].get('extra_ood')
    sem, = study.make_cbs('SEM+cutmix', 'spatial γ=0.03', study.ROUNDS[19])
    assert sem.spatial and sem.gamma == .03 and type(sem.mixer).__name__ == 'CutMixMixer'

def test_rounds_20_and_21_pair_the_cnns_test_table_at_the_defaults_with_gamma_0(study, tmp_path):
    for rnd, gamma in ((20, default_gamma('mixup')), (21, 0.)):
        with pytest.raises(SystemExit, match='no grid'): study.main(['--grid', '--round', str(rnd), '--out-dir', str(tmp_path)])
        runs = study.test_runs(study.parse_args(['--test', '--round', str(rnd)]))
        assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config'], r['seed']) for r in runs} == {
            (f'test{rnd}', 'cnn', 5, 'SEM+mixup', 'default', s) for s in (0, 1, 2)}
        sem, = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[rnd])
        assert sem.gamma == gamma and sem.standardize == 'global' and not sem.spatial and study.ROUNDS[rnd]['extra_ood']

def test_rounds_22_and_23_rerun_the_cnn_runs_of_rounds_18_and_16_17_scored_also_against_typed_characters(study, monkeypatch):
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs18, runs16, runs17, runs22, runs23 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)]))
                                              for r in (18, 16, 17, 22, 23))
    assert {key(r) for r in runs22} == {key(r) for r in runs18 if r['arch'] == 'cnn'} and len(runs22) == 12
    assert {key(r) for r in runs23} == {key(r) for r in runs16 + runs17} and len(runs23) == 12
    assert {r['phase'] for r in runs22} == {'valid22'} and {r['phase'] for r in runs23} == {'valid23'}
    assert study.ROUNDS[22]['extra_ood'] == study.ROUNDS[23]['extra_ood'] == ('photos', 'inverted', 'glyphs')
    # round 24: the ResNet's runs of round 18 but the null-space penalty; rounds 25 and 26: rounds 20 and 21
    runs24 = study.grid_runs(study.parse_args(['--grid', '--round', '24']))
    assert {key(r) for r in runs24} == {key(r) for r in runs18 if r['arch'] == 'resnet18' and r['config'] != 'nullspace γ=0.03'}
    assert len(runs24) == 9 and {r['phase'] for r in runs24} == {'valid24'} and study.ROUNDS[24]['extra_ood'][-1] == 'glyphs'
    for rnd, earlier in ((25, 20), (26, 21), (27, 8), (28, 9)):   # rounds 27 and 28: rounds 8-9's SEM pair at 20 epochs
        runs, before = (study.test_runs(study.parse_args(['--test', '--round', str(r)])) for r in (rnd, earlier))
        before = [r for r in before if r['method'] == 'SEM+mixup']
        assert [dict(r, phase=None) for r in runs] == [dict(r, phase=None) for r in before] and runs[0]['phase'] == f'test{rnd}'
        assert study.ROUNDS[rnd]['default'] == study.ROUNDS[earlier]['default'] and study.ROUNDS[rnd]['extra_ood'][-1] == 'glyphs'
    x = study.glyphs(30, seed=1)
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8 and x.max() == 255
    assert (x == study.glyphs(30, seed=1)).all() and not (x == study.glyphs(30, seed=2)).all()
    on = x > 0   # framed like MNIST: inside a 20-pixel box, centre of mass within a pixel of the centre
    assert all(np.ptp(np.nonzero(o)[0]) < 20 and np.ptp(np.nonzero(o)[1]) < 20 for o in on)
    centre = lambda a, axis: (a.sum(axis) * np.arange(28)).sum() / a.sum()
    assert all(abs(centre(a.astype(float), 1) - 13.5) <= 1.5 and abs(centre(a.astype(float), 0) - 13.5) <= 1.5 for a in x)
    # the round's OOD sets by name, the glyphs among them
    x_valid = np.zeros((4, 28, 28), np.uint8)
    logits_of = lambda model, dls, x: torch.tensor([[5., 0.]]*len(x)) if x is x_valid else torch.zeros(len(x), 2)
    monkeypatch.setattr(study.R, 'logits_of', logits_of)
    monkeypatch.setattr(study, 'glyphs', lambda: x)
    res = study.extra_ood_metrics(SimpleNamespace(model=None, dls=None), SimpleNamespace(x_test=x_valid), ('glyphs',))
    assert res == {'auroc_glyphs': 1.0, 'auroc_glyphs_energy': 1.0}

def test_round_29_is_round_3s_default_with_the_gradient_through_the_target(study, tmp_path):
    with pytest.raises(SystemExit, match='no test table'): study.main(['--test', '--round', '29', '--out-dir', str(tmp_path)])
    key = lambda r: (r['phase'], r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs29, runs3 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (29, 3))
    new = {key(r) for r in runs29} - {key(r) for r in runs3}
    assert new == {('valid2', a, f'SEM+{m}', 'through-target γ=0.03', s, e) for m in ('mixup', 'cutmix')
                   for a, e in (('cnn', 5), ('resnet18', 4)) for s in (0, 1, 2)}
    assert {key(r) for r in runs3} <= {key(r) for r in runs29}   # judged beside round 3's runs, which it shares
    for mix in ('mixup', 'cutmix'):
        (sem,), (sem3,) = (study.make_cbs(f'SEM+{mix}', c, study.ROUNDS[29]) for c in ('through-target γ=0.03', 'global γ=0.03'))
        assert not sem.detach_target and sem3.detach_target
        assert (sem.gamma, sem.standardize, sem.spatial) == (sem3.gamma, sem3.standardize, sem3.spatial) == (.03, 'global', False)
    # round 3's selection does not see round 29's runs, which share its files
    assert 'through-target γ=0.03' not in {r['config'] for r in runs3}


def test_round_30_reads_the_resnets_h_before_its_heads_dropouts(study):
    from fastai.vision.all import create_body, create_head, nn
    from torchvision.models import resnet18
    from fastai_sem.features import penalty_site
    key = lambda r: (r['phase'], r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs30, runs3 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (30, 3))
    assert {key(r) for r in runs30} - {key(r) for r in runs3} == {
        ('valid2', 'resnet18', f'SEM+{m}', 'pre-dropout γ=0.03', s, 4) for m in ('mixup', 'cutmix') for s in (0, 1, 2)}
    assert {r['arch'] for r in runs30} == {'resnet18'}
    sem, = study.make_cbs('SEM+cutmix', 'pre-dropout γ=0.03', study.ROUNDS[30])
    assert (sem.gamma, sem.standardize, sem.spatial) == (.03, 'global', False)
    # in vision_learner's model, '1.2' is the head's BatchNorm1d on the pooled body features, before any dropout
    model = nn.Sequential(create_body(resnet18(), n_in=1, pretrained=False), create_head(512, 10))
    head = list(model[1])
    site = penalty_site(model, sem.layer)
    assert site.module is head[2] and isinstance(site.module, nn.BatchNorm1d) and not site.use_input
    assert not any(isinstance(m, nn.Dropout) for m in head[:3]) and isinstance(head[3], nn.Dropout)


def test_round_31_reruns_round_3s_cutmix_runs_with_fastais_box_in_its_own_files(study):
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs31, runs3 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (31, 3))
    cutmix3 = {key(r) for r in runs3 if r['method'] in ('CutMix', 'SEM+cutmix')}
    assert {key(r) for r in runs31} == cutmix3 | {(a, 'SEM+cutmix', 'γ=0', s, e) for a, e in (('cnn', 5), ('resnet18', 4)) for s in (0, 1, 2)}
    assert {r['phase'] for r in runs31} == {'valid31'} and len(runs31) == 24
    sem, = study.make_cbs('SEM+cutmix', 'γ=0', study.ROUNDS[31])
    assert sem.gamma == 0 and type(sem.mixer).__name__ == 'CutMixMixer'


def test_round_32_is_the_test_table_of_sem_cutmix_at_gamma_0_03(study, tmp_path):
    with pytest.raises(SystemExit, match='no grid'): study.main(['--grid', '--round', '32', '--out-dir', str(tmp_path)])
    runs = study.test_runs(study.parse_args(['--test', '--round', '32']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config'], r['seed']) for r in runs} == {
        ('test32', a, e, 'SEM+cutmix', 'default', s) for a, e in (('cnn', 5), ('resnet18', 4)) for s in (0, 1, 2)}
    sem, = study.make_cbs('SEM+cutmix', 'default', study.ROUNDS[32])
    assert (sem.gamma, sem.standardize, sem.spatial, type(sem.mixer).__name__) == (.03, 'global', False, 'CutMixMixer')


def test_a_run_trains_for_its_own_epochs(study, monkeypatch):
    "`run_one` fits for the run's `epochs` (round 7's 20), not the architecture's usual number"
    fitted = []
    class FakeLearner:
        class recorder: metric_names, values = ['epoch', 'train_loss', 'valid_loss', 'time'], [[0., 0.]]
        model = None
        def no_bar(self): return __import__('contextlib').nullcontext()
        no_logging = no_bar
        def fit_one_cycle(self, epochs, lr): fitted.append(epochs)
    monkeypatch.setattr(study, 'make_learner', lambda arch, dls, cbs: FakeLearner())
    monkeypatch.setattr(study.R, 'evaluate', lambda learn, data: dict(clean_acc=0.9))
    data = type('Data', (), dict(dls=lambda self, bs, seed: None, x_train=range(3)))()
    args = study.parse_args(['--grid', '--round', '7'])
    run = study.grid_runs(args)[0]
    row = study.run_one(run, data, args)
    assert fitted == [20] and row['epochs'] == 20


@pytest.mark.slow
def test_smoke_round_3(tmp_path):
    "Grid, no-harm selection and test table of round 3 on tiny sizes, into a temporary folder"
    pytest.importorskip('mlxtend')
    if not any(FASHION.glob('train-images-idx3-ubyte*')): pytest.skip('needs Fashion-MNIST (apt-get install dataset-fashion-mnist)')
    res = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--round', '3', '--threads', '1', '--out-dir', str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert {'defaults_grid2.csv', 'defaults_selection3.csv', 'defaults_test3.csv'} <= {f.name for f in tmp_path.iterdir()}
    assert 'mixup: default' in res.stdout and 'cutmix: default' in res.stdout


def test_round_33_judges_calibration_after_temperature_scaling(study):
    "Round 33's rule: an ECE cost that temperature scaling takes away (`ece_ts`) is no harm; one that it leaves is"
    grid = made_up_grid({'small': dict(corruption_acc=0.002, ece=0.02), 'large': dict(corruption_acc=0.02, ece=0.02)})
    grid['ece_ts'] = grid['ece'] - np.where(grid['config'] == 'large', 0.02, 0.)   # 'small' keeps its ECE cost
    assert study.select_no_harm(grid, CONFIGS)[2]['mixup'][0] is None   # round 3's rule: both do harm
    per_arch, _, chosen = study.select_no_harm(grid, CONFIGS, ece_col='ece_ts')
    assert chosen['mixup'][0] == 'large'
    assert set(per_arch.loc[per_arch.config == 'small', 'harm']) == {'ece_ts, ece_ts > 0.01'}
    # the targets, reported beside the rule: a gain beyond the seed noise on corruptions only
    assert set(per_arch.loc[per_arch.config == 'large', 'missed']) == {'auroc_mnist, auroc_mnist_energy'}
    assert set(per_arch.loc[per_arch.config == 'small', 'missed']) == {'auroc_mnist, auroc_mnist_energy, ece_ts'}


def test_round_33_runs_three_gammas_per_mixer_the_cnn_at_20_epochs(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '33']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config'], r['seed']) for r in runs} == {
        ('valid33', a, e, m, c, s) for a, e in (('cnn', 20), ('resnet18', 4)) for s in (0, 1, 2)
        for mix, base in (('mixup', 'MixUp'), ('cutmix', 'CutMix'))
        for m, c in ((base, 'base'), *((f'SEM+{mix}', f'global γ={g}') for g in ('0.03', '0.1', '0.3')))}
    assert study.ROUNDS[33]['temperature'] and study.ROUNDS[33]['ece_col'] == 'ece_ts'


def test_temperature_metrics_score_each_half_with_the_other_halfs_temperature(study, monkeypatch):
    "Overconfident logits (×4 of calibrated ones): T ≈ 4, and the ECE after it far below the raw one"
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10000) % 10
    calibrated = torch.randn(10000, 10, generator=g)
    calibrated[torch.arange(10000), y] += 2.
    y = torch.multinomial(calibrated.softmax(1), 1, generator=g)[:, 0]   # labels drawn from softmax(calibrated)
    ood = torch.randn(500, 10, generator=g)
    monkeypatch.setattr(study.R, 'logits_of', lambda model, dls, x: 4 * (calibrated if x == 'in' else ood))
    learn, data = SimpleNamespace(model=None, dls=None), SimpleNamespace(x_test='in', y_test=y.numpy(), ood=lambda: 'out')
    res = study.temperature_metrics(learn, data)
    assert res['temperature'] == pytest.approx(4, rel=0.15)
    assert res['ece_ts'] < 0.03 < 0.3 < res['ece_halves']
    assert set(res) == set(study.TEMPERATURE_COLS)


def test_round_34_is_the_test_table_at_round_33s_mixup_choice_with_its_baseline(study, tmp_path):
    with pytest.raises(SystemExit, match='no grid'): study.main(['--grid', '--round', '34', '--out-dir', str(tmp_path)])
    runs = study.test_runs(study.parse_args(['--test', '--round', '34']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config'], r['seed']) for r in runs} == {
        ('test34', a, e, m, c, s) for a, e in (('cnn', 20), ('resnet18', 4)) for s in (0, 1, 2)
        for m, c in (('MixUp', 'base'), ('SEM+mixup', 'default'))}
    sem, = study.make_cbs('SEM+mixup', 'default', study.ROUNDS[34])
    assert (sem.gamma, sem.standardize, sem.spatial, type(sem.mixer).__name__) == (.3, 'global', False, 'MixupMixer')
    assert study.ROUNDS[34]['temperature']


def test_round_35_counts_the_glyph_aurocs_as_harm_on_the_cnn_only(study):
    "A loss on the typed characters beyond the seed noise is harm on the CNN, and not on the ResNet (round 35's rule)"
    grid = made_up_grid({'small': dict(corruption_acc=0.002), 'large': dict(corruption_acc=0.02)})
    for arch, loss in (('cnn', 0.02), ('resnet18', 0.)):
        grid.loc[grid.arch == arch, 'auroc_glyphs'] = 0.8
        grid.loc[grid.arch == arch, 'auroc_glyphs_energy'] = 0.9 - np.where(grid.loc[grid.arch == arch, 'config'] == 'large', loss, 0.)
    assert study.select_no_harm(grid, CONFIGS)[2]['mixup'][0] == 'large'      # without it: the larger gain
    per_arch, _, chosen = study.select_no_harm(grid, CONFIGS, extra_harm=study.ROUNDS[35]['extra_harm'])
    assert chosen['mixup'][0] == 'small'
    assert per_arch.set_index(['config', 'arch']).loc[('large', 'cnn'), 'harm'] == 'auroc_glyphs_energy'
    # a loss on the ResNet's typed characters is not harm there: its OOD AUROCs are too noisy to judge (rounds 3, 6, 24)
    grid.loc[(grid.arch == 'resnet18') & (grid.config == 'small'), 'auroc_glyphs'] -= 0.05
    assert study.select_no_harm(grid, CONFIGS, extra_harm=study.ROUNDS[35]['extra_harm'])[2]['mixup'][0] == 'small'


def test_round_35_runs_fastais_mixup_the_default_and_the_null_space_penalty_with_the_glyphs(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '35']))
    assert {(r['phase'], r['arch'], r['epochs'], r['method'], r['config'], r['seed']) for r in runs} == {
        ('valid35', a, e, m, c, s) for a, e in (('cnn', 20), ('resnet18', 4)) for s in (0, 1, 2)
        for m, c in (('MixUp', 'base'), ('SEM+mixup', 'global γ=0.03'),
                     *(('SEM+mixup', f'nullspace γ={g}') for g in ('0.03', '0.1', '0.3')))}
    rnd = study.ROUNDS[35]
    assert rnd['temperature'] and rnd['ece_col'] == 'ece_ts' and rnd['extra_ood'] == ('glyphs',)
    assert rnd['configs']['nullspace γ=0.3'] == dict(standardize='global', distance='nullspace', gamma=.3)


def test_round_37_adds_the_spatial_cutmix_target_to_round_31s_runs_in_its_files(study):
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs37, runs31 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (37, 31))
    spatial = {(a, 'SEM+cutmix', f'spatial γ={g}', s, e) for a, e in (('cnn', 5), ('resnet18', 4))
               for g in ('0.03', '0.1', '0.3') for s in (0, 1, 2)}
    assert {key(r) for r in runs37} == {key(r) for r in runs31} | spatial
    assert {r['phase'] for r in runs37} == {'valid31'} and len(runs37) == 42
    rnd = study.ROUNDS[37]
    assert rnd['rule'] == 'no_harm' and rnd.get('ece_col', 'ece') == 'ece' and not rnd.get('extra_harm')
    sem, = study.make_cbs('SEM+cutmix', 'spatial γ=0.3', rnd)
    assert (sem.gamma, sem.standardize, sem.spatial, type(sem.mixer).__name__) == (.3, 'global', True, 'CutMixMixer')
    # round 31's own selection does not see round 37's runs, which share its files
    args = study.parse_args(['--select', '--round', '31'])
    assert not any(c.startswith('spatial') for c in study.own_grid(study.read_all(study.RESULTS/'defaults_grid31.csv'), args).config)


def test_round_38_adds_the_null_space_penalty_with_cutmix_to_rounds_31_and_37(study):
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs38, runs37 = (study.grid_runs(study.parse_args(['--grid', '--round', str(r)])) for r in (38, 37))
    null = {(a, 'SEM+cutmix', f'nullspace γ={g}', s, e) for a, e in (('cnn', 5), ('resnet18', 4))
            for g in ('0.03', '0.1', '0.3') for s in (0, 1, 2)}
    assert {key(r) for r in runs38} == {key(r) for r in runs37} | null and len(runs38) == 60
    assert {r['phase'] for r in runs38} == {'valid31'}
    rnd = study.ROUNDS[38]
    assert rnd['rule'] == 'no_harm' and rnd.get('ece_col', 'ece') == 'ece' and not rnd.get('extra_harm')
    sem, = study.make_cbs('SEM+cutmix', 'nullspace γ=0.1', rnd)
    assert (sem.gamma, sem.standardize, sem.spatial, sem.distance.keep) == (.1, 'global', False, 'nullspace')


def test_round_39_spatial_null_space_leaves_the_logits_free_and_extends_round_35s_cnn_runs(study):
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3))
    dist = study.ClassifierSubspaceMSE('spatial-nullspace'); dist.bind(model)
    d = torch.randn(4, 6, 5, 5)
    w = model[3].weight.detach()
    # a difference the logits read (the same row-space vector at every position) costs nothing; one with zero mean
    # over the positions (which pooling removes) costs all of it, though its positions lie in the row space
    row = (torch.randn(4, 3) @ w)[..., None, None].expand(4, 6, 5, 5)
    assert dist((row + 0.).flatten(1), torch.zeros(4, 150)) < 1e-10
    zero_mean = d - d.mean((2, 3), keepdim=True)
    assert torch.allclose(dist(zero_mean.flatten(1), torch.zeros(4, 150)), zero_mean.square().mean())
    # and it splits the mse with what the logits read
    q = torch.linalg.qr(w.T).Q
    seen = ((d.mean((2, 3)) @ q) @ q.T)[..., None, None].expand_as(d)
    assert torch.allclose(dist(d.flatten(1), torch.zeros(4, 150)) + seen.square().mean(), d.square().mean())
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '39']))
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs35 = study.grid_runs(study.parse_args(['--grid', '--round', '35', '--archs', 'cnn']))
    assert {key(r) for r in runs} == {key(r) for r in runs35} | {('cnn', 'SEM+mixup', f'spatial nullspace γ={g}', s, 20)
                                                               for g in ('0.03', '0.1', '0.3') for s in (0, 1, 2)}
    assert {r['phase'] for r in runs} == {'valid35'}
    sem, = study.make_cbs('SEM+mixup', 'spatial nullspace γ=0.1', study.ROUNDS[39])
    assert (sem.gamma, sem.spatial, sem.distance.keep) == (.1, True, 'spatial-nullspace')
    assert study.ROUNDS[39]['extra_harm'] == {'cnn': ('auroc_glyphs', 'auroc_glyphs_energy')}


def test_round_40_decays_gamma_over_the_fit_and_extends_round_35s_cnn_runs(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '40']))
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs35 = study.grid_runs(study.parse_args(['--grid', '--round', '35', '--archs', 'cnn']))
    new = {'global γ=0.3', 'global γ=0.1 decayed', 'global γ=0.3 decayed'}
    assert {key(r) for r in runs} == {key(r) for r in runs35} | {('cnn', 'SEM+mixup', c, s, 20) for c in new for s in (0, 1, 2)}
    assert {r['phase'] for r in runs} == {'valid35'}
    sem, decay = study.make_cbs('SEM+mixup', 'global γ=0.3 decayed', study.ROUNDS[40])
    assert (sem.gamma, sem.standardize, sem.spatial, decay.gamma, decay.schedule) == (.3, 'global', False, .3, 'fall')
    assert len(study.make_cbs('SEM+mixup', 'global γ=0.3', study.ROUNDS[40])) == 1   # the constant γ has no schedule
    # γ at each training batch is γ·(1 − pct_train): 0.3 at the start, 0.15 half-way, 0 at the end; after the fit the
    # callback holds the γ it started from again
    from conftest import synth_learner
    seen = []
    class Watch(study.Callback):
        order, run_valid = 60, False   # after SEMMixup (55) has used γ in this training batch's loss
        def after_loss(self): seen.append((self.learn.pct_train, self.learn.sem_mixup.gamma))
    sem, decay = study.make_cbs('SEM+mixup', 'global γ=0.3 decayed', study.ROUNDS[40])
    learn = synth_learner(cbs=[sem, decay, Watch()], n=32, bs=8)
    learn.fit(2, 1e-3)
    assert len(seen) == 8 and all(abs(g - .3*(1 - pct)) < 1e-12 for pct, g in seen)
    assert seen[0][1] == .3 and seen[-1][1] < .3 and sem.gamma == .3
    assert study.ROUNDS[40]['extra_harm'] == {'cnn': ('auroc_glyphs', 'auroc_glyphs_energy')}


def test_round_41_raises_gamma_over_the_fit_beside_round_40(study):
    runs = study.grid_runs(study.parse_args(['--grid', '--round', '41']))
    key = lambda r: (r['arch'], r['method'], r['config'], r['seed'], r['epochs'])
    runs40 = study.grid_runs(study.parse_args(['--grid', '--round', '40']))
    assert {key(r) for r in runs} == {key(r) for r in runs40} | {('cnn', 'SEM+mixup', f'global γ={g} rising', s, 20)
                                                               for g in ('0.1', '0.3') for s in (0, 1, 2)}
    assert {r['phase'] for r in runs} == {'valid35'}
    from conftest import synth_learner
    seen = []
    class Watch(study.Callback):
        order, run_valid = 60, False   # after SEMMixup (55) has used γ in this training batch's loss
        def after_loss(self): seen.append((self.learn.pct_train, self.learn.sem_mixup.gamma))
    sem, rise = study.make_cbs('SEM+mixup', 'global γ=0.1 rising', study.ROUNDS[41])
    assert (sem.gamma, rise.schedule) == (.1, 'rise')
    learn = synth_learner(cbs=[sem, rise, Watch()], n=32, bs=8)
    learn.fit(2, 1e-3)
    assert len(seen) == 8 and all(abs(g - .1*pct) < 1e-12 for pct, g in seen) and seen[0][1] == 0 and sem.gamma == .1
    with pytest.raises(ValueError, match="'fall' or 'rise'"): study.LinearGamma(.1, 'up')
