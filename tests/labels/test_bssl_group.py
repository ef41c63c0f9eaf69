"""labels.bssl_group_size: CV-DD's BSSL statistics over 8 images of each stored batch of 16."""
import pytest
import torch
import torch.nn as nn

from conftest import compose
from hald.errors import ConfigError
from hald.labels.relabel import check_bssl_group, label_groups
from hald.models import build_backbone
from hald.models.teachers import Committee
from hald.pipeline.preflight import check_labels
from hald.pipeline.stages import relabel_config


def _bn_batch_sizes(net: nn.Module) -> list[int]:
    sizes: list[int] = []
    first = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    first.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    return sizes


def test_group_of_8_equals_each_half_labelled_alone_and_differs_from_the_whole_batch():
    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar", 10, 3, 16).eval()
    committee = Committee([net], mode="bssl")
    xs = [torch.randn(16, 3, 16, 16) for _ in range(3)]
    halves = label_groups(committee, xs, 1.0, bn_group=8)
    alone = [torch.cat([label_groups(committee, [h], 1.0)[0] for h in x.split(8)]) for x in xs]
    whole = label_groups(committee, xs, 1.0)
    for a, b, w in zip(halves, alone, whole):
        assert a.shape == (16, 10) and (a - b).abs().max() <= 1e-4
        assert (a - w).abs().max() > 1e-3  # other statistics, other labels


def test_each_batchnorm_group_holds_8_images(monkeypatch):
    """Without ghost grouping (one forward per group) the first BN sees 8 images at a time."""
    import hald.labels.relabel as relabel

    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar", 10, 3, 16).eval()
    committee = Committee([net], mode="bssl")
    sizes = _bn_batch_sizes(net)
    seen = []
    monkeypatch.setattr(relabel, "bssl_logits",
                        lambda c, chunks: seen.extend(len(x) for x in chunks) or torch.cat([c(x) for x in chunks]))
    label_groups(committee, [torch.randn(16, 3, 16, 16), torch.randn(16, 3, 16, 16)], 1.0, bn_group=8)
    assert seen == [8, 8, 8, 8] and sizes == [8, 8, 8, 8]


def test_group_size_must_divide_the_stored_batch(tmp_path):
    assert check_bssl_group(None, 16) is None and check_bssl_group(8, 16) == 8
    with pytest.raises(ValueError, match="divisor"):
        check_bssl_group(6, 16)
    cfg = compose(["labels.teacher_mode=bssl", "labels.bssl_group_size=5"], tmp_path)
    with pytest.raises(ConfigError, match="bssl_group_size=5"):
        check_labels(cfg, None)


def test_the_group_size_keys_the_store(tmp_path):
    a = relabel_config(compose(["labels.teacher_mode=bssl"], tmp_path))
    b = relabel_config(compose(["labels.teacher_mode=bssl", "labels.bssl_group_size=8"], tmp_path))
    assert a != b and b["bssl_group_size"] == 8
