"""`fastai-sem`, the installed console script, as a new user meets it: every kind of bad input gives one line on
stderr and exit status 2 (never a traceback), help is quick and complete, and a short run prints a log that reads
well in a file (no progress-bar frames, no upstream warnings)."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXE = Path(sys.executable).parent / 'fastai-sem'


def fsem(*args, cwd=None, timeout=600):
    r = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def digit_folder(dest, n=None, layout='per class', classes=None):
    "The scikit-learn 8×8 digits as 32-px PNGs under `dest`: 'per class' folders or 'train/valid'"
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    dest = Path(dest)
    for i, (img, c) in enumerate(list(zip(x, y))[:n]):
        if classes is not None and c not in classes: continue
        sub = dest / (('valid' if i % 5 == 0 else 'train') if layout == 'train/valid' else '') / str(c)
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((32, 32)).save(sub / f'{i}.png')
    return dest


@pytest.fixture(scope='module')
def digits(tmp_path_factory): return digit_folder(tmp_path_factory.mktemp('digits') / 'digits', 200)


def one_line_error(rc, out, err, *words):
    assert rc == 2, (rc, out, err)
    assert 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith('fastai-sem: error: '), err
    for w in words: assert w in err, (w, err)


def bad_folder(tmp_path, kind):
    "A folder (or path) with one thing wrong"
    if kind == 'missing': return tmp_path / 'no-such-folder'
    if kind == 'file':
        (tmp_path / 'images.zip').write_bytes(b'PK')
        return tmp_path / 'images.zip'
    if kind == 'empty':
        (tmp_path / 'empty').mkdir()
        return tmp_path / 'empty'
    if kind == 'no-classes':
        d = digit_folder(tmp_path / 'tmp', 12)
        flat = tmp_path / 'flat'; flat.mkdir()
        for f in d.rglob('*.png'): f.rename(flat / f.name)
        return flat
    if kind == 'one-class': return digit_folder(tmp_path / 'ones', 100, classes=[1])
    if kind == 'unreadable':
        d = digit_folder(tmp_path / 'bad', 40)
        (d / '3' / 'corrupt.png').write_bytes(b'\x89PNG not really')
        return d
    if kind == 'truncated':   # a real PNG cut in half: it opens (the header is fine) and fails when decoded
        d = digit_folder(tmp_path / 'cut', 40)
        f = next((d / '3').glob('*.png'))
        data = f.read_bytes(); (d / '3' / 'cut.png').write_bytes(data[:len(data) // 2])
        return d
    if kind == 'valid-extra-class':
        d = digit_folder(tmp_path / 'split', 60, layout='train/valid')
        (d / 'valid' / 'zebra').mkdir()
        (d / 'valid' / '1' / '1.png').rename(d / 'valid' / 'zebra' / 'z.png') if (d / 'valid' / '1' / '1.png').exists() else \
            next((d / 'valid').rglob('*.png')).rename(d / 'valid' / 'zebra' / 'z.png')
        return d


@pytest.mark.parametrize('kind, words', [
    ('missing', ['does not exist', 'no-such-folder']),
    ('file', ['is a file, not a folder']),
    ('empty', ['no images in class sub-folders']),
    ('no-classes', ['12 images but no class sub-folders', 'sub-folder named after it']),
    ('one-class', ["single class ('1')", 'at least two']),
    ('unreadable', ['cannot be read as images', 'corrupt.png']),
    ('truncated', ['cannot be read as images', 'cut.png']),
    ('valid-extra-class', ['zebra', 'same class sub-folders']),
])
def test_bad_folder(tmp_path, kind, words):
    one_line_error(*fsem('train', bad_folder(tmp_path, kind)), *words)


@pytest.mark.parametrize('args, words', [
    (['--epochs', '0'], ['--epochs 0', '1 or more']),
    (['--gamma', '-1'], ['--gamma -1', '0 or more']),
    (['--bs', '1'], ['--bs 1']),
    (['--lr', '0'], ['--lr 0']),
    (['--alpha', '-0.5'], ['--alpha -0.5']),
    (['--mix', 'mixp'], ["--mix 'mixp'", 'did you mean mixup']),
    (['--epochs', 'three'], ["invalid int value: 'three'", 'fastai-sem train --help']),
    (['--colour'], ['unrecognized arguments: --colour']),
])
def test_bad_option(args, words):
    "Option values are checked before any data is read or fastai is imported"
    one_line_error(*fsem('train', *args), *words)


def test_bad_arch(digits):
    one_line_error(*fsem('train', digits, '--arch', 'resnt18'), "--arch 'resnt18'", 'did you mean resnet18')


def test_too_large_batch(digits):
    one_line_error(*fsem('train', digits, '--bs', '512'), '--bs 512 is more than the 160 training images')


def test_unknown_command():
    one_line_error(*fsem('trian'), "invalid choice: 'trian'")


def test_help():
    rc, out, err = fsem('--help')
    assert rc == 0 and 'train' in out and 'COMMAND' in out, out
    rc, out, err = fsem('train', '--help')
    assert rc == 0, err
    for opt in ['--mix', '--gamma', '--alpha', '--epochs', '--arch', '--bs', '--lr', '--size', '--seed', '--compare',
                '--shared-batch', 'PATH/train/CLASS', 'PATH/CLASS', 'held out']:
        assert opt in out, opt
    rc, out, err = fsem()
    assert rc == 2 and 'train' in err
    rc, out, err = fsem('find-gamma', '--help')
    assert rc == 0, err
    for opt in ['--gammas', '--epochs', '--plot', '--mix', 'ECE']: assert opt in out, opt


def test_help_imports_neither_fastai_nor_torch():
    "`--help` answers at once: the CLI imports fastai (and torch) only to train"
    code = ("import sys\nfrom fastai_sem.cli import main\n"
            "try: main(['train', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == '[]', r.stdout + r.stderr


def test_short_run_log(digits, tmp_path):
    "A short run's output: the chosen settings in one line, plain epoch lines, the table and its column notes"
    rc, out, err = fsem('train', digits, '--epochs', '1', '--compare', cwd=tmp_path)
    assert rc == 0, err
    assert 'Traceback' not in err and 'FutureWarning' not in err and 'torch.jit' not in err, err
    assert '\r' not in out and '█' not in out and '%|' not in out, out     # no progress-bar frames in a log
    lines = out.splitlines()
    chose = [l for l in lines if l.startswith('chose ')]
    assert len(chose) == 1 and 'size 32' in chose[0] and 'batch size 8' in chose[0], out
    assert 'warning: only' not in err                                       # 160 images at batch 8: 20 steps
    table = lines[lines.index(next(l for l in lines if l.startswith('method'))):]
    assert table[0].split() == ['method', 'γ', 'accuracy', 'valid_loss', 'label_loss', 'sem_loss', 'seconds'], table
    from fastai_sem.step import SEM
    assert table[1].split()[:2] == ['SEM', f'{SEM(None).gamma:g}'] and table[2].split()[:3] == ['plain', 'mixup', '0'], table
    assert table[-1].startswith('Columns: γ:'), table
    secs = table[1].split()[-1]
    assert '.' in secs and len(secs.split('.')[1]) == 1, secs               # seconds to one decimal


def test_few_steps_warning(digits, tmp_path):
    rc, out, err = fsem('train', digits, '--epochs', '1', '--bs', '64', cwd=tmp_path)
    assert rc == 0, err
    assert 'warning: only 2 training steps per epoch' in err, err


@pytest.mark.slow
def test_defaults_fit_small_data(tmp_path):
    "The 1,400-image digits case of the issue: the old fixed defaults reached 0.51, the chosen ones must do well"
    d = digit_folder(tmp_path / 'digits', 1400)
    rc, out, err = fsem('train', d, cwd=tmp_path)
    assert rc == 0, err
    row = next(l for l in out.splitlines() if l.startswith('SEM '))
    assert float(row.split()[2]) > 0.95, out


def test_compare_command(digits, tmp_path):
    "`fastai-sem compare` (the main job) on a small folder: both methods per seed, every metric, the noise sentence"
    rc, out, err = fsem('compare', digits, '--seeds', '2', '--epochs', '1', '--bs', '16', cwd=tmp_path)
    assert rc == 0, err
    assert 'Traceback' not in err and '\r' not in out and '█' not in out, out + err
    for word in ('clean acc', 'corruption acc', 'AUROC MSP', 'AUROC energy', 'ECE', 'time', 'seed noise'):
        assert word in out, (word, out)
    assert out.count('SEM, seed') == 2 and out.count('plain mixup, seed') == 2, out


@pytest.mark.parametrize('args,words', [(('--seeds', '1'), ('--seeds', '2 or more')), (('--lr', '0'), ('--lr',)),
                                        (('--mix', 'mixupp'), ('--mix',)), (('--gamma', '-1'), ('--gamma',))])
def test_compare_bad_options(tmp_path, args, words):
    one_line_error(*fsem('compare', *args, cwd=tmp_path), *words)


def test_find_gamma_command(digits, tmp_path):
    "`fastai-sem find-gamma` on a small folder: one row per γ with accuracy, ECE and corruption accuracy, a suggestion, a plot"
    rc, out, err = fsem('find-gamma', digits, '--gammas', '0,1', '--epochs', '1', '--bs', '16', '--plot', 'g.png', cwd=tmp_path)
    assert rc == 0, err
    assert 'Traceback' not in err and '\r' not in out and '█' not in out, out + err
    for word in ('accuracy', 'ece', 'corruption_acc', 'auroc_msp', 'auroc_energy', 'suggested γ = ', 'train with it: fastai-sem train',
                 'scored against 40 pixel-permuted copies of them'):   # 32-px RGB digits: not MNIST's size, so permuted
        assert word in out, (word, out)
    suggested = float(out.split('suggested γ = ')[1].split(':')[0])
    assert suggested in (0., 1.), out
    assert f'--gamma {suggested:g}' in out, out
    assert (tmp_path / 'g.png').stat().st_size > 1000


@pytest.mark.parametrize('args,words', [(('--gammas', '0,x'), ('--gammas', 'commas')), (('--gammas', '0,-1'), ('--gammas',)),
                                        (('--gammas', '1,1'), ('--gammas',)), (('--epochs', '0'), ('--epochs',)),
                                        (('--arch', 'resnett18'), ('--arch',)), (('--ood', 'svhn'), ('--ood', 'none'))])
def test_find_gamma_bad_options(tmp_path, args, words):
    one_line_error(*fsem('find-gamma', *args, cwd=tmp_path), *words)



def test_find_gamma_ood_options(digits, tmp_path):
    "`--ood none` leaves the OOD columns out (`--calibrate` adds ece_ts); `--ood mnist` refuses images that are not 28×28 greyscale, naming the option"
    rc, out, err = fsem('find-gamma', digits, '--gammas', '0,1', '--epochs', '1', '--bs', '16', '--ood', 'none', '--calibrate', cwd=tmp_path)
    assert rc == 0, err
    assert 'suggested γ = ' in out and 'auroc' not in out and 'OOD' not in out, out
    assert 'ece_ts' in out and 'ECE after temperature scaling is at most 0.01' in out, out
    one_line_error(*fsem('find-gamma', digits, '--ood', 'mnist', cwd=tmp_path), '--ood mnist', '28×28', '--ood permuted')
