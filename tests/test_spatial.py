"""The scale-free and spatial penalties on real architectures.

- `feature_map_site` finds the map before global pooling in fastai heads, torchvision and timm models and
  `nn.Sequential`; ViT-style models fall back to the pooled h with a warning; models whose classifier is a 1×1
  convolution (torchvision SqueezeNet, timm DLA) train without `layer=`, pooled and spatial.
- Multiplying a model's features by 100 before its classifier leaves the default penalty unchanged (and multiplies
  the raw one by 10,000).
"""
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision
from fastai.basics import CrossEntropyLossFlat, Learner
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18

from fastai_sem.all import SEMMixup, SEM, feature_map_site, penalty_site, representation_site
from conftest import n_hooks, quiet, synth_dls

BS, SIZE = 4, 32


def dls_for(n_in=3): return synth_dls(n=BS, bs=BS, n_valid=BS, size=SIZE, channels=n_in)


def timm_model(name, **kw):
    timm = pytest.importorskip('timm')
    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


def plain(model): return lambda d: Learner(d, model(), loss_func=CrossEntropyLossFlat())


# (id, builder: dls -> Learner, feature-map site (None: falls back to h), pooled h site)
MODELS = [
    ('fastai-resnet18', lambda d: vision_learner(d, resnet18, pretrained=False, n_out=3, loss_func=CrossEntropyLossFlat()), '1.0', '1.7'),
    ('torchvision-resnet18', plain(lambda: torchvision.models.resnet18(num_classes=3)), 'avgpool', 'fc'),
    ('torchvision-squeezenet1_1', plain(lambda: torchvision.models.squeezenet1_1(num_classes=3)), 'classifier.0', 'classifier.0'),
    ('timm-resnet10t', plain(lambda: timm_model('resnet10t')), 'global_pool', 'fc'),
    ('timm-dla34', plain(lambda: timm_model('dla34')), 'global_pool', 'fc'),
    ('timm-vit', plain(lambda: timm_model('vit_tiny_patch16_224', img_size=SIZE, patch_size=8, depth=2)), None, 'head'),
    ('sequential', plain(lambda: nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                               nn.Flatten(), nn.Linear(8, 3))), '2', '4'),
]


@pytest.mark.parametrize('name,build,map_site,h_site', [pytest.param(*m, id=m[0]) for m in MODELS])
@pytest.mark.parametrize('mix', ['mixup', 'cutmix'])
def test_spatial_penalty_trains(name, build, map_site, h_site, mix):
    torch.manual_seed(0)
    learn = quiet(build(dls_for()))
    assert representation_site(learn.model).name == h_site   # 1×1-conv classifiers need no layer= either
    site = feature_map_site(learn.model)
    assert (site.name if site is not None else None) == map_site
    sem = SEMMixup(mix=mix, spatial=True)
    learn.add_cb(sem)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn.fit(1, 1e-3)
    fell_back = [x for x in w if 'spatial=True' in str(x.message)]
    assert bool(fell_back) == (map_site is None)
    assert sem.site.name == (map_site or h_site)
    assert torch.isfinite(sem.sem_loss) and sem.sem_loss > 0 and sem.sem_loss.dtype == torch.float32
    assert n_hooks(learn.model) == 0


class Times(nn.Module):
    def __init__(self, k): super().__init__(); self.k = k
    def forward(self, x): return x * self.k


def _first_penalty(k, **kw):
    "The penalty of one SEM step of a small CNN whose features are multiplied by `k` before the classifier"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), Times(k),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 3, (8,))
    sem = SEM(model, **kw)
    torch.manual_seed(1)
    with sem.step(x, y) as step: out = step.loss(model(step.x), nn.functional.cross_entropy)
    return out.penalty.item()


@pytest.mark.parametrize('spatial', [False, True])
def test_default_penalty_ignores_feature_scale(spatial):
    p1, p100 = _first_penalty(1., spatial=spatial), _first_penalty(100., spatial=spatial)
    assert p1 > 0 and p100 == pytest.approx(p1, rel=1e-4)
    r1, r100 = _first_penalty(1., spatial=spatial, standardize=None), _first_penalty(100., spatial=spatial, standardize=None)
    assert r100 == pytest.approx(1e4 * r1, rel=1e-3)
