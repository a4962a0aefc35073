"""The package as pip builds it: no setuptools warning, the LICENSE and the embedded dataset (with its notice) in
the wheel, and an installed wheel that loads the data from outside the checkout; build output is ignored by git."""
import os, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(ROOT), '--no-deps', '--no-build-isolation', '-w', str(out)],
                       capture_output=True, text=True, cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    whl, = out.glob('fastai_sem-*.whl')
    return whl, r.stdout + r.stderr


def test_no_setuptools_warning(wheel):
    _, log = wheel
    assert 'absent from the `packages` configuration' not in log, log
    assert 'Warning' not in log, log


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel[0]).namelist()
    for want in ['fastai_sem/data/fashion_mnist_small.npz', 'fastai_sem/data/LICENSE-fashion-mnist.txt', 'fastai_sem/cli.py']:
        assert want in names, names
    assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names), names
    meta = zipfile.ZipFile(wheel[0]).read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    assert 'License-Expression: Apache-2.0' in meta
    assert '.invalid' not in meta and 'fastai-sem.github.io' not in meta and '<this repository>' not in meta


def test_installed_wheel_loads_data(wheel, tmp_path):
    "Installed from the wheel into a folder of its own and run from elsewhere: the data ships with the package"
    site = tmp_path / 'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--target', str(site), str(wheel[0])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import fastai_sem, fastai_sem.data as d\n"
            "x, y, xt, yt = d.load_fashion_small()\n"
            "print(fastai_sem.__file__); print(x.shape, xt.shape)")
    env = {**os.environ, 'PYTHONPATH': str(site)}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    where, shapes = r.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(site), where                 # the installed copy, not the checkout
    assert shapes == '(3000, 28, 28) (1000, 28, 28)', shapes


def test_build_output_ignored():
    paths = ['build/lib/fastai_sem/cli.py', 'dist/fastai_sem-0.1.0-py3-none-any.whl', 'fastai_sem.egg-info/PKG-INFO',
             '_build/html/index.html', '_proc/index.ipynb', '_docs/index.html']
    r = subprocess.run(['git', 'check-ignore', '--no-index', *paths], capture_output=True, text=True, cwd=ROOT)
    assert sorted(r.stdout.split()) == sorted(paths), r.stdout
    assert (ROOT / 'LICENSE').read_text().startswith(' ' * 30 + 'Apache License') or 'Apache License' in (ROOT / 'LICENSE').read_text()[:200]
