"""Recorded augmentation: sampling is seeded and self-contained, rendering is exact and gives the peers' pixels."""
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from hald.data import replay
from hald.data.replay import Geometry, draw_crop, render, render_layout, sample_pass

MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25])


def images(n=20, size=32):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def test_sample_pass_is_seeded_and_ignores_global_rng():
    a = sample_pass(20, (32, 32), 6, 32, seed=3)
    torch.manual_seed(123)
    torch.rand(5)
    b = sample_pass(20, (32, 32), 6, 32, seed=3)
    c = sample_pass(20, (32, 32), 6, 32, seed=4)
    assert [len(g) for g in a] == [6, 6, 6, 2]  # the short last batch is kept
    for x, y in zip(a, b):
        for f in ("index", "box", "flip", "mix_perm", "mix_box"):
            assert torch.equal(getattr(x, f), getattr(y, f))
    assert not all(torch.equal(x.box, y.box) for x, y in zip(a, c))
    # every image exactly once per pass, crops inside the image, integer dtypes
    assert sorted(torch.cat([g.index for g in a]).tolist()) == list(range(20))
    box = torch.cat([g.box for g in a]).long()
    assert box.dtype == torch.long and (box[:, 0] + box[:, 2] <= 32).all() and (box[:, 1] + box[:, 3] <= 32).all()


def torchvision_uint8(imgs, g, out, mean, std):
    """The peers' path: per image torchvision v2 resized_crop + flip on uint8, to float, normalise; batch CutMix."""
    rows = []
    for i, (top, left, h, w), flip in zip(g.index.tolist(), g.box.tolist(), g.flip.tolist()):
        x = TF.resized_crop(imgs[i], top, left, h, w, [out, out], antialias=True)
        x = TF.to_dtype(TF.horizontal_flip(x) if flip else x, torch.float32, scale=True)
        rows.append(TF.normalize(x, mean.tolist(), std.tolist()))
    x = torch.stack(rows)
    y1, x1, y2, x2 = (int(v) for v in g.mix_box)
    x[:, :, y1:y2, x1:x2] = x[g.mix_perm.long(), :, y1:y2, x1:x2].clone()
    return x


@pytest.mark.parametrize("channels, size, out", [(3, 32, 24), (3, 40, 64), (1, 28, 28)])
def test_render_is_deterministic_layout_free_and_gives_torchvisions_uint8_pixels(channels, size, out):
    imgs = images(size=size)[:, :channels].contiguous()
    mean, std = MEAN[:channels], STD[:channels]
    for g in sample_pass(20, (size, size), 8, out, seed=1):
        x = render(imgs, g, out, mean, std)
        assert x.shape == (len(g), channels, out, out) and x.dtype == torch.float32
        assert torch.equal(x, render(imgs, g, out, mean, std))
        assert torch.equal(x, render(render_layout(imgs), g, out, mean, std))  # the layout is speed only
        assert torch.allclose(x, torchvision_uint8(imgs, g, out, mean, std), atol=1e-5)  # float rounding of the
        # normalisation only: the same uint8 pixels


def test_accelerator_kernel_stays_within_two_levels_of_the_cpu_pixels():
    """Off the CPU there is no uint8 antialiased kernel: the float one with the CPU's pass order and rounding
    (forced here on the CPU) differs on few pixels, by at most 2 of 255."""
    gen = torch.Generator().manual_seed(0)
    differ = total = 0
    for trial in range(60):
        h, w = (int(v) for v in torch.randint(8, 160, (2,), generator=gen))
        out = (112, 64, 32)[trial % 3]
        crop = (torch.rand(1, 3, h, w, generator=gen) * 255).to(torch.uint8)
        cpu = replay._resize(crop, out).int()
        acc = replay._resize(crop, out, uint8_kernel=False)
        assert acc.dtype == torch.float32 and torch.equal(acc, acc.round())
        d = (acc.int() - cpu).abs()
        assert d.max() <= 2
        differ, total = differ + int((d > 0).sum()), total + d.numel()
    assert differ / total < 0.03


def test_hard_crops_are_the_ones_torchvisions_transforms_drew():
    """draw_crop + render = the RandomResizedCrop + flip + normalise transform hard epochs used before."""
    from hald.data.transforms import train_transform

    imgs = images(8, 40)
    ds = {"input_size": 32, "mean": MEAN.tolist(), "std": STD.tolist()}
    transform = train_transform(ds, (0.08, 1.0), 0.5)
    flips = set()
    for i in range(8):
        torch.manual_seed(100 + i)
        before = transform(imgs[i])
        torch.manual_seed(100 + i)
        box, flip = draw_crop((40, 40), (0.08, 1.0), flip_p=0.5)
        g = Geometry(torch.tensor([i]), torch.tensor([box], dtype=torch.int16), torch.tensor([flip]),
                     torch.zeros(1, dtype=torch.int16), torch.zeros(4, dtype=torch.int16))
        assert torch.allclose(render(imgs, g, 32, MEAN, STD)[0], before, atol=1e-5)
        flips.add(flip)
    assert flips == {True, False}


def test_full_box_is_identity_and_flip_and_cutmix_are_applied():
    imgs = images(4)
    full = torch.tensor([[0, 0, 32, 32]] * 4, dtype=torch.int16)
    g = Geometry(torch.arange(4), full, torch.tensor([False, True, False, False]),
                 torch.tensor([1, 0, 3, 2], dtype=torch.int16), torch.tensor([0, 0, 8, 8], dtype=torch.int16))
    x = render(imgs, g, 32, torch.zeros(3), torch.ones(3))
    ref = imgs.float() / 255
    assert torch.allclose(x[0, :, 8:, 8:], ref[0, :, 8:, 8:], atol=1e-6)       # outside the box: own pixels
    assert torch.allclose(x[0, :, :8, :8], ref[1].flip(-1)[:, :8, :8], atol=1e-6)  # partner 1 is flipped
    assert torch.allclose(x[1, :, 8:, 8:], ref[1].flip(-1)[:, 8:, 8:], atol=1e-6)  # flipped
    assert torch.allclose(x[2, :, :8, :8], ref[3, :, :8, :8], atol=1e-6)           # partner's patch


def test_the_accelerators_code_path_runs():
    """Off the CPU render keeps float pixels and resizes in float: on the meta device (shapes and dtypes only,
    no GPU needed) the whole path runs, identity-size crops and CutMix included."""
    imgs = render_layout(images()).to("meta")
    for out, scale in ((24, (0.08, 1.0)), (32, (1.0, 1.0))):  # (1, 1): full 32 px crops, no resize
        for g in sample_pass(20, (32, 32), 8, out, seed=1, scale=scale):
            x = render(imgs, g, out, MEAN.to("meta"), STD.to("meta"))
            assert x.device.type == "meta" and x.shape == (len(g), 3, out, out) and x.dtype == torch.float32
