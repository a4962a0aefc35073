"""SEMMixup on real architectures: where h is found by default, and one training step.

For each model: `representation_site` finds the input of the final classifier (through a Dropout right before it
in an `nn.Sequential`), one fit of one training batch with SEMMixup gives a finite label loss and penalty, changes
the weights, and leaves no hook. Images are 3×32×32 (1×32×32 for `n_in=1`), batches of 4, random weights.
"""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torchvision
from fastai.basics import CrossEntropyLossFlat, Learner
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18, resnet34

from fastai_sem.all import SEMMixup, representation_site, forward_features
from conftest import n_hooks, params_finite, quiet, synth_dls

BS, SIZE = 4, 32


def dls_for(n_in=3): return synth_dls(n=BS, bs=BS, n_valid=BS, size=SIZE, channels=n_in)


def vl(dls, arch, **kw):
    "fastai's vision_learner with random weights (the synthetic dls have no vocab: n_out and loss given)"
    return vision_learner(dls, arch, pretrained=False, n_out=3, loss_func=CrossEntropyLossFlat(), **kw)


def tv_vit():
    return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                mlp_dim=64, num_classes=3)


def timm_model(name, **kw):
    timm = pytest.importorskip('timm')
    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


# (id, builder: dls -> Learner, expected site name, expected h width, slow?)
MODELS = [
    ('fastai-resnet18-n_in1', lambda d: vl(d, resnet18, n_in=1), '1.7', 512, False),
    ('fastai-resnet34-n_in3', lambda d: vl(d, resnet34, n_in=3), '1.7', 512, False),
    ('fastai-timm-resnet10t', lambda d: vl(d, 'resnet10t'), '1.7', 512, False),
    ('timm-resnet10t', lambda d: Learner(d, timm_model('resnet10t'), loss_func=CrossEntropyLossFlat()), 'fc', 512, False),
    ('timm-vit', lambda d: Learner(d, timm_model('vit_tiny_patch16_224', img_size=SIZE, patch_size=8, depth=2),
                                   loss_func=CrossEntropyLossFlat()), 'head', 192, False),
    ('torchvision-densenet121', lambda d: Learner(d, torchvision.models.densenet121(num_classes=3), loss_func=CrossEntropyLossFlat()),
     'classifier', 1024, False),
    ('torchvision-efficientnet_b0', lambda d: Learner(d, torchvision.models.efficientnet_b0(num_classes=3),
                                                      loss_func=CrossEntropyLossFlat()), 'classifier.0', 1280, False),
    ('torchvision-vit', lambda d: Learner(d, tv_vit(), loss_func=CrossEntropyLossFlat()), 'heads.head', 32, False),
    ('sequential', lambda d: Learner(d, nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                                      nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
                                     loss_func=CrossEntropyLossFlat()), '6', 16, False),
]


@pytest.mark.parametrize('name,build,site,width', [
    pytest.param(*m[:4], id=m[0], marks=[pytest.mark.slow] if m[4] else []) for m in MODELS])
@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
def test_model(name, build, site, width, shared_batch):
    n_in = 1 if name.endswith('n_in1') else 3
    torch.manual_seed(0)
    learn = quiet(build(dls_for(n_in)))
    s = representation_site(learn.model)
    assert (s.name, s.use_input) == (site, True)
    x = learn.dls.one_batch()[0]
    learn.model.eval()
    with torch.no_grad(): h = forward_features(learn.model, s, x)
    assert h.shape == (BS, width) and n_hooks(learn.model) == 0
    lf, w0 = learn.loss_func, [p.detach().clone() for p in learn.model.parameters()]
    sem = SEMMixup(shared_batch=shared_batch)
    learn.add_cb(sem)
    learn.fit(1, 1e-3)
    assert sem.site.name == site
    assert torch.isfinite(sem.sem_loss) and torch.isfinite(sem.label_loss) and sem.sem_loss.dtype == torch.float32
    assert sem.lam.shape == (BS,)
    assert any(not torch.equal(p, q) for p, q in zip(learn.model.parameters(), w0)), 'one step changed the weights'
    assert params_finite(learn.model) and n_hooks(learn.model) == 0 and learn.loss_func is lf


def test_explicit_layer_body_output():
    "`layer=` a module name: h is that module's output, flattened (here the conv body of a vision_learner: 512×1×1)"
    torch.manual_seed(0)
    learn = quiet(vl(dls_for(), resnet18, cbs=SEMMixup(layer='0')))
    learn.fit(1, 1e-3)
    assert learn.sem_mixup.site == representation_site(learn.model, '0')
    assert learn.sem_mixup.site.use_input is False and torch.isfinite(learn.sem_mixup.sem_loss)
    assert n_hooks(learn.model) == 0


class TwiceLinear(nn.Module):
    "A model whose final Linear is called twice in forward"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(3, 3)
    def forward(self, x): return self.fc(torch.relu(self.fc(self.body(x))))


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
def test_linear_called_twice(shared_batch):
    learn = quiet(Learner(dls_for(), TwiceLinear(), loss_func=CrossEntropyLossFlat(), cbs=SEMMixup(shared_batch=shared_batch)))
    lf = learn.loss_func
    with pytest.raises(ValueError, match='more than once'): learn.fit(1, 1e-3)
    assert n_hooks(learn.model) == 0 and learn.loss_func is lf
    learn.remove_cb(SEMMixup)
    learn.fit(1, 1e-3)   # the model itself still trains


def test_named_sequential_heads():
    "torchvision's ViT keeps its classifier in `heads = Sequential(OrderedDict(head=Linear))`: found by name"
    m = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout()),
                                  heads=nn.Sequential(OrderedDict(drop=nn.Dropout(), head=nn.Linear(6, 3)))))
    assert representation_site(m).name == 'heads.drop'
