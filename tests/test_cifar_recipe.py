"""`benchmarks/cifar100_paper.py`: the dry run (CPU, random CIFAR-shaped tensors, up to the first step), the model,
the crop/flip augmentation and both data layouts `--data` accepts (on tiny fake copies)."""
import pickle, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'cifar100_paper.py'


@pytest.fixture(scope='module')
def recipe(): return load_script(SCRIPT)


@pytest.mark.parametrize('method', ['sem-mixup', 'erm'])
def test_dry_run(method):
    res = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--threads', '1', '--method', method],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert 'dry run ok' in res.stdout and 'logits (16, 100)' in res.stdout and '11.22M parameters' in res.stdout
    assert ('sem_loss' in res.stdout) == method.startswith('sem')


def test_help():
    res = subprocess.run([sys.executable, str(SCRIPT), '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and '--data' in res.stdout and '--dry-run' in res.stdout


def test_model(recipe):
    from fastai_sem.features import representation_site, forward_features
    m = recipe.PreActResNet18(100).eval()
    # PreActResNet-18 with the final BN-ReLU of the pre-activation design: 11,171,146 for 10 classes without it
    # (kuangliu's CIFAR version), + 1,024 for that BatchNorm, + 512·90 + 90 for 100 classes
    assert sum(p.numel() for p in m.parameters()) == 11_171_146 + 1_024 + 512*90 + 90
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 100)
    site = representation_site(m)
    assert site.name == 'linear' and site.use_input
    assert forward_features(m, site, x).shape == (2, 512)


def test_pad_crop_flip(recipe):
    from fastai.basics import TensorImage
    tfm = recipe.PadCropFlip(4)
    x = TensorImage(torch.rand(64, 3, 32, 32))
    torch.manual_seed(0)
    out = tfm(x, split_idx=0)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # every output is a shifted (and maybe flipped) window of the zero-padded input
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        ok = any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2))
                 for w in (xp[i, :, dy:dy+32, dx:dx+32] for dy in range(9) for dx in range(9)))
        assert ok, i
    assert torch.equal(tfm(x, split_idx=1), x)        # validation batches are left alone


def _fake_cifar(n):
    g = np.random.default_rng(0)
    return g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), g.integers(0, 100, n)


def test_torchvision_layout(recipe, tmp_path):
    root = tmp_path / 'cifar-100-python'
    root.mkdir()
    for split, n in (('train', 20), ('test', 10)):
        x, y = _fake_cifar(n)
        with open(root / split, 'wb') as f:
            pickle.dump({'data': x.transpose(0, 3, 1, 2).reshape(n, -1), 'fine_labels': y.tolist()}, f)
    xtr, ytr, xte, yte = recipe.load_cifar100(tmp_path)
    assert xtr.shape == (20, 32, 32, 3) and xte.shape == (10, 32, 32, 3) and xtr.dtype == np.uint8
    np.testing.assert_array_equal(xtr, _fake_cifar(20)[0])
    dls = recipe.cifar_dls(xtr, ytr, xte, yte, bs=4, device=torch.device('cpu'))
    xb, yb = dls.valid.one_batch()
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and abs(float(xb.mean())) < 1


def test_imagefolder_layout(recipe, tmp_path):
    from PIL import Image
    x, _ = _fake_cifar(6)
    for split in ('train', 'test'):
        for i, c in enumerate(('apple', 'bee')):
            (tmp_path / split / c).mkdir(parents=True)
            for j in range(3): Image.fromarray(x[3*i + j]).save(tmp_path / split / c / f'{j}.png')
    xtr, ytr, xte, yte = recipe.load_cifar100(tmp_path)
    assert xtr.shape == (6, 32, 32, 3) and ytr.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(xtr, x)
    with pytest.raises(SystemExit): recipe.load_cifar100(tmp_path / 'train')
