"""train.micro_batch_size: the student's BatchNorm sees 8 images, the gradient is the mean over micro-batches
(CV-DD's validation: batch 16, two accumulation steps of 8)."""
import copy

import torch
import torch.nn as nn

from conftest import compose
from hald.models import build_backbone
from hald.train.losses import soft_kl
from hald.train.module import StudentModule
from hald.train.phases import standard_phases
from hald.train.schedule import SOFT, make_schedule


def _module(micro):
    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar", 10, 3, 16)
    return StudentModule(net, 10, make_schedule("soft_only", 2), standard_phases(16, 16, temperature=20.0, t2=False),
                         lr=1e-3, micro_batch_size=micro)


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(16, 3, 16, 16, generator=g),
            "target": torch.softmax(torch.randn(16, 10, generator=g), 1)}


def _grads(module):
    return [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


def test_batchnorm_sees_the_micro_batch():
    module = _module(8)
    sizes = []
    for m in module.net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, i, o: sizes.append(i[0].shape[0]))
    module.train()
    module.log = lambda *a, **k: None  # no trainer attached
    module.training_step(_batch(), 0)
    assert sizes and set(sizes) == {8} and len(sizes) == 2 * 20  # 20 BN layers, two forwards each


def test_gradient_equals_the_mean_over_micro_batches():
    module = _module(8)
    module.train()
    module.log = lambda *a, **k: None
    ref = copy.deepcopy(module)  # same weights, BN buffers and mode
    module.training_step(_batch(), 0).backward()
    got = _grads(module)
    # CV-DD's loop: each half forward + backward on its own, loss / accumulation steps
    b = _batch()
    for xs, ts in zip(b["x"].split(8), b["target"].split(8)):
        (soft_kl(ref(xs), ts, 20.0, False) / 2).backward()
    want = _grads(ref)
    assert len(got) == len(want) > 0
    assert all(torch.allclose(a, w, rtol=1e-4, atol=1e-7) for a, w in zip(got, want))
    # BN running statistics were updated once per micro-batch, as in the official loop
    bn = [m for m in module.net.modules() if isinstance(m, nn.BatchNorm2d)][0]
    bn_ref = [m for m in ref.net.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean) and bn.num_batches_tracked == 2


def test_whole_batch_by_default_and_the_config_reaches_the_module(tmp_path):
    from hydra.utils import instantiate

    module = _module(None)
    assert module.micro_forward(torch.randn(4, 3, 16, 16)).shape == (4, 10)
    cfg = compose(["train.micro_batch_size=8"], tmp_path)
    built = instantiate(cfg.student.module)(net=build_backbone("convnet_w32", 10, 1, 28), num_classes=10,
                                            schedule=make_schedule("S6", 4), phases=instantiate(cfg.student.phases),
                                            lr=0.01, eta=1.0)
    assert built.hparams.micro_batch_size == 8 and compose([], tmp_path).train.micro_batch_size is None
