"""The hard phase's CutMix + label smoothing: torchvision's v2.CutMix exactly, without its batch copies."""
import pytest
import torch
from torchvision.transforms import v2

from hald.train.losses import cutmix_smoothed_targets


@pytest.mark.parametrize("alpha", [1.0, 0.4])
@pytest.mark.parametrize("shape", [(8, 3, 32, 32), (5, 1, 17, 29), (2, 3, 224, 224)])
def test_cutmix_equals_torchvision(alpha, shape):
    """Same seed -> the same pixels and targets as v2.CutMix(alpha, C) then smoothing (the code before)."""
    c, eps = 10, 0.8
    for seed in range(6):
        x = torch.rand(shape)
        y = torch.randint(c, (shape[0],))
        torch.manual_seed(seed)
        ref_x, ref_t = v2.CutMix(alpha=alpha, num_classes=c)(x.clone(), y)
        ref_t = ref_t * (1.0 - eps) + eps / c
        torch.manual_seed(seed)
        after = torch.rand(1)  # the global generator advanced exactly as much as v2's draws
        torch.manual_seed(seed)
        mixed, t = cutmix_smoothed_targets(x, y, c, alpha, eps)
        assert torch.equal(mixed, ref_x) and torch.equal(t, ref_t)
        torch.manual_seed(seed)
        v2.CutMix(alpha=alpha, num_classes=c)(torch.rand(shape), y)
        ref_next = torch.rand(1)
        torch.manual_seed(seed)
        cutmix_smoothed_targets(torch.rand(shape), y, c, alpha, eps)
        assert torch.equal(torch.rand(1), ref_next) and not torch.equal(ref_next, after)


def test_cutmix_mixes_in_place_and_keeps_layout():
    """No batch-sized copy: the returned batch is the input, channels-last stays channels-last."""
    x = torch.rand(6, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    torch.manual_seed(3)
    out, t = cutmix_smoothed_targets(x, torch.arange(6), 6, 1.0, 0.1)
    assert out is x and out.is_contiguous(memory_format=torch.channels_last)
    changed = (before != x).any(dim=1).any(dim=0)  # [H, W]: where the box was pasted
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    y1, y2, x1, x2 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    assert torch.equal(x[..., y1:y2, x1:x2], before.roll(1, 0)[..., y1:y2, x1:x2])  # image k gets image k - 1's box
    outside = torch.ones_like(changed)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(x[..., outside], before[..., outside])
    assert torch.allclose(t.sum(1), torch.ones(6))


def test_no_cutmix_is_smoothed_onehot():
    """alpha 0 or a batch of one: the labels smoothed, the pixels untouched."""
    x = torch.rand(1, 3, 8, 8)
    same = x.clone()
    out, t = cutmix_smoothed_targets(x, torch.tensor([2]), 4, 1.0, 0.8)
    assert torch.equal(out, same) and torch.allclose(t, torch.tensor([[0.2, 0.2, 0.4, 0.2]]))
