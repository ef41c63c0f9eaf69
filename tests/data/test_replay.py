"""Recorded augmentation: sampling is seeded and self-contained, rendering is exact and vectorised."""
import torch

from hald.data.replay import Geometry, render, render_loop, sample_pass

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


def test_render_is_deterministic_and_equals_per_image_loop():
    imgs = images()
    for g in sample_pass(20, (32, 32), 8, 24, seed=1):
        x = render(imgs, g, 24, MEAN, STD)
        assert x.shape == (len(g), 3, 24, 24)
        assert torch.equal(x, render(imgs, g, 24, MEAN, STD))
        assert torch.allclose(x, render_loop(imgs, g, 24, MEAN, STD), atol=1e-6)


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
