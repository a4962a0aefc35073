"""`benchmarks/calibration.py`: its two-fold ECE, its options, and a smoke run of every code path."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'calibration.py'


@pytest.fixture(scope='module')
def script(): return load_script(SCRIPT)


def test_two_fold_ece_fits_the_temperature_on_the_other_half_and_undoes_a_scaling(script):
    g = torch.Generator().manual_seed(0)
    z = 2*torch.randn(4000, 10, generator=g)
    y = torch.multinomial(F.softmax(z, -1), 1, generator=g).ravel().numpy()   # softmax(z) is calibrated
    over = script.two_fold_ece(3*z, y)
    assert over['temperature'] == pytest.approx(3, rel=0.1) and over['ece_ts'] < 0.03 < over['ece_halves']
    under = script.two_fold_ece(z/2, y)
    assert under['temperature'] == pytest.approx(0.5, rel=0.1) and under['ece_ts'] < 0.03 < under['ece_halves']
    # each half is scored with the T of the other: with one half's logits ×3 and the other's as they are, a T fitted
    # on the scored half would calibrate both, the other half's T calibrates neither
    a, _ = script.stratified_split(y, 0.5, 0)
    mixed = z.clone(); mixed[a] *= 3
    assert script.two_fold_ece(mixed, y)['ece_ts'] > 0.1


@pytest.mark.parametrize('bad', [['--gammas', '0'], ['--gammas', '0.3', '-1'], ['--seeds', '1']])
def test_bad_options_are_refused(script, bad):
    with pytest.raises(SystemExit): script.parse_args(bad)


def test_smoke_run_compares_each_gamma_with_gamma_0_and_scores_ece_with_and_without_t(script, tmp_path, capsys):
    script.main(['--smoke', '--out-dir', str(tmp_path), '--data', 'digits', '--gammas', '0.3', '1', '--threads', '1'])
    runs = pd.read_csv(tmp_path/'calibration.digits.cnn.mixup.csv')
    assert len(runs) == 2*2*2   # γ × method × seed
    assert set(runs[runs.method == 'SEM'].gamma) == {0.3, 1.} and set(runs[runs.method != 'SEM'].gamma) == {0.}
    assert (runs[runs.method == 'SEM'].gamma == runs[runs.method == 'SEM'].sem_gamma).all()
    assert runs[['ece', 'ece_halves', 'ece_ts', 'temperature', 'clean_acc']].notna().all().all() and (runs.temperature > 0).all()
    # the plain mixer is the same training for every γ (same seed, same batches): compare_sem is deterministic here
    plain = runs[runs.method != 'SEM'].set_index(['sem_gamma', 'seed']).clean_acc
    assert np.allclose(plain.loc[0.3].values, plain.loc[1.].values)
    table = script.summary(tmp_path)
    assert list(table.gamma) == [0.3, 1.] and (table.seeds == 2).all() and table.d_ece_ts.str.contains('±').all()
    assert 'without and with T' in capsys.readouterr().out
