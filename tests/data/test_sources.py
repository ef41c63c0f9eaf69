"""Tests of the real-dataset registry (hald.data.sources) on miniature stand-ins written in tmp_path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

from hald.data.sources import (SOURCES, FileSource, ImageSource, SourceError, build_source, check_source,
                               class_names, mnist5k)

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
DATASETS = ("mnist5k", "cifar10", "cifar100", "tiny_imagenet", "imagenette", "imagewoof", "imagenet1k", "imagefolder")
REQUIRED_KEYS = ("name", "root", "download", "num_classes", "channels", "input_size", "mean", "std", "test_resize")


def dataset_cfg(name: str, **overrides):
    """The shipped yaml of ``name`` with user overrides, as Hydra would hand it over."""
    return OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides)


def assert_one_line_error(excinfo, *needles) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    assert "fix:" in message, message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in: {message}"
    return message


# --------------------------------------------------------------------------------------------------
# Miniature datasets
# --------------------------------------------------------------------------------------------------


def write_image(path: Path, gray: bool = False, size: tuple[int, int] = (8, 8), seed: int = 0) -> None:
    """A tiny random image; the format follows the extension (.JPEG, .jpg, .png)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if gray:
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L").save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(path)


TINY_WNIDS = ("n00000003", "n00000001", "n00000002")  # wnids.txt is unsorted, like the official one


def make_tiny(root: Path, wnids=TINY_WNIDS, train_per_class: int = 2, val_per_class: int = 2) -> Path:
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {w[-1]}, other name\n" for w in wnids) + "n09\tunused\n")
    for k, wnid in enumerate(wnids):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for j in range(train_per_class):
            # One grayscale JPEG: an RGB dataset must convert it to 3 channels.
            write_image(images / f"{wnid}_{j}.JPEG", gray=(k, j) == (0, 0), seed=10 * k + j)
    val = root / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for n, wnid in enumerate(list(wnids) * val_per_class):
        write_image(val / f"val_{n}.JPEG", seed=100 + n)
        lines.append(f"val_{n}.JPEG\t{wnid}\t0\t1\t7\t6")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


FOLDER_CLASSES = ("dog", "bird", "cat")


def make_class_folders(root: Path, split_dirs=("train", "val"), classes=FOLDER_CLASSES, per_class: int = 2) -> Path:
    extensions = (".JPEG", ".jpg", ".png", ".PNG", ".jpeg")
    for s, split_dir in enumerate(split_dirs):
        for k, cls in enumerate(classes):
            folder = root / split_dir / cls
            folder.mkdir(parents=True)
            for j in range(per_class):
                ext = extensions[(k + j) % len(extensions)]
                # Mixed sizes: sources keep the native size. One grayscale JPEG in an RGB dataset.
                write_image(folder / f"img_{j}{ext}", gray=(k, j) == (0, 0), size=(8 + j, 6 + k), seed=s * 100 + k * 10 + j)
            (folder / "notes.txt").write_text("not an image")
            (folder / "._img_0.jpg").write_bytes(b"macOS resource fork")
    return root


class Py2Str(str):
    """A str that pickles as a Python 2 str, as in the official CIFAR files."""


class Py2Pickler(pickle._Pickler):
    """Writes Py2Str with the SHORT_BINSTRING opcode: such strings load as bytes with encoding="bytes"
    and as str with encoding="latin1", exactly like the keys of the real CIFAR pickles."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1")
        self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def write_cifar_pickle(path: Path, content: dict, style: str) -> None:
    def convert(value):
        if isinstance(value, str):
            return Py2Str(value) if style == "py2" else value.encode("latin1")
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    content = {convert(k): convert(v) for k, v in content.items()}
    with open(path, "wb") as f:
        if style == "py2":
            Py2Pickler(f, protocol=2).dump(content)
        else:  # a Python 3 writer that used bytes keys (b"data", b"labels", ...)
            pickle.dump(content, f)


def cifar_names(name: str) -> list[str]:
    if name == "cifar10":
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return sorted(f"class_{k:03d}" for k in range(100))


def make_cifar(root: Path, name: str, style: str = "py2") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stand-in CIFAR pickles with 2 rows per train batch and 3 test rows; returns the expected data."""
    rng = np.random.default_rng(1)
    names = cifar_names(name)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        labels_key, meta = "labels", {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}
        meta_file, rows = "batches.meta", {"train": 2, "test": 3}
    else:
        folder = root / "cifar-100-python"
        files = {"train": ["train"], "test": ["test"]}
        labels_key = "fine_labels"
        meta = {"fine_label_names": names, "coarse_label_names": [f"super_{k}" for k in range(20)]}
        meta_file, rows = "meta", {"train": 6, "test": 3}
    folder.mkdir(parents=True)
    write_cifar_pickle(folder / meta_file, meta, style)
    expected = {}
    for split, split_files in files.items():
        datas, labelss = [], []
        for file_name in split_files:
            data = rng.integers(0, 256, (rows[split], 3072), dtype=np.uint8)
            labels = rng.integers(0, len(names), rows[split]).tolist()
            content = {"batch_label": f"{split} batch", labels_key: labels, "data": data,
                       "filenames": [f"img_{i}.png" for i in range(rows[split])]}
            if name == "cifar100":
                content["coarse_labels"] = [lab // 5 for lab in labels]
            write_cifar_pickle(folder / file_name, content, style)
            datas.append(data)
            labelss.append(labels)
        expected[split] = (np.concatenate(datas), np.concatenate(labelss))
    return expected


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_yaml_has_required_keys(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key in REQUIRED_KEYS:
        assert key in cfg, f"{name}.yaml lacks {key}"
    assert cfg.name == name and name in SOURCES
    assert cfg.root is None and cfg.download is False
    assert cfg.channels in (1, 3) and len(cfg.mean) == len(cfg.std) == cfg.channels
    assert cfg.test_resize in (None, 256)


def test_yaml_values():
    expected = {  # name: (num_classes, channels, input_size, test_resize)
        "mnist5k": (10, 1, 28, None), "cifar10": (10, 3, 32, None), "cifar100": (100, 3, 32, None),
        "tiny_imagenet": (200, 3, 64, None), "imagenette": (10, 3, 224, 256), "imagewoof": (10, 3, 224, 256),
        "imagenet1k": (1000, 3, 224, 256),
        "imagefolder": (None, 3, 224, 256),
    }
    for name, values in expected.items():
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert (cfg.num_classes, cfg.channels, cfg.input_size, cfg.test_resize) == values, name
    assert OmegaConf.load(CONF / "mnist5k.yaml").mean == [0.1307]
    assert OmegaConf.load(CONF / "cifar100.yaml").std == [0.2675, 0.2565, 0.2761]
    assert OmegaConf.load(CONF / "imagenet1k.yaml").mean == [0.485, 0.456, 0.406]
    mnist = OmegaConf.load(CONF / "mnist5k.yaml")
    assert (mnist.train_per_class, mnist.split_seed) == (400, 0)
    folder = OmegaConf.load(CONF / "imagefolder.yaml")
    assert (folder.train_dir, folder.test_dir) == ("train", "test")


# --------------------------------------------------------------------------------------------------
# mnist5k
# --------------------------------------------------------------------------------------------------


def test_mnist5k_from_yaml():
    cfg = dataset_cfg("mnist5k")
    check_source(cfg)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert isinstance(train, ImageSource) and (len(train), len(test)) == (4000, 1000)
    assert train.classes == [str(d) for d in range(10)] and train.channels == 1
    assert np.bincount(train.targets).tolist() == [400] * 10
    assert np.bincount(test.targets).tolist() == [100] * 10
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and label == train.targets[0]
    assert isinstance(label, int) and int(image.max()) > 0

    again = build_source(cfg, "train")  # deterministic: same items in the same order
    assert again.targets == train.targets and np.array_equal(again.images, train.images)

    # Items are copies: an in-place change by the caller must not reach the dataset.
    image.zero_()
    assert int(train[0][0].max()) > 0


def test_mnist5k_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 500)
    split = mnist5k._stratified_split(labels, 400, 0)
    assert len(np.intersect1d(split["train"], split["test"])) == 0
    assert np.array_equal(np.union1d(split["train"], split["test"]), np.arange(5000))
    assert all(np.all(np.diff(idx) > 0) for idx in split.values())  # sorted
    assert np.array_equal(mnist5k._stratified_split(labels, 400, 0)["train"], split["train"])
    assert not np.array_equal(mnist5k._stratified_split(labels, 400, 1)["train"], split["train"])
    source = build_source(dataset_cfg("mnist5k", train_per_class=450, split_seed=3), "test")
    assert len(source) == 500 and np.bincount(source.targets).tolist() == [50] * 10


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------


def test_cifar_standin_matches_real_pickle_format(tmp_path):
    make_cifar(tmp_path, "cifar10", "py2")
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert b"data" in pickle.loads(raw, encoding="bytes")  # Python 2 str keys: bytes ...
    assert "data" in pickle.loads(raw, encoding="latin1")  # ... or str, depending on the encoding


@pytest.mark.parametrize("style", ["py2", "bytes"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickles(tmp_path, name, style):
    expected = make_cifar(tmp_path, name, style)
    cfg = dataset_cfg(name, root=str(tmp_path))
    for split in ("train", "test"):
        source = build_source(cfg, split)
        data, labels = expected[split]
        assert source.classes == cifar_names(name) and source.channels == 3
        assert len(source) == len(data) and source.targets == labels.tolist()
        image, label = source[len(source) - 1]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == labels[-1]
        # Rows are channel-major: 1024 red values, then green, then blue.
        row = data[-1]
        assert image[1, 2, 3] == row[1024 + 2 * 32 + 3] and image[2, 31, 0] == row[2048 + 31 * 32]
    assert len(build_source(cfg, "train")) == (10 if name == "cifar10" else 6)


def fake_torchvision(monkeypatch, on_init):
    """Stand-in for torchvision's official CIFAR classes so that download=true is testable offline."""
    calls = []

    def factory(name):
        def create(root, train, download):
            calls.append((name, root, train, download))
            on_init(name, Path(root))
        return create

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", factory("cifar10"))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", factory("cifar100"))
    return calls


def test_cifar_download_fetches_then_reads_pickles(tmp_path, monkeypatch):
    calls = fake_torchvision(monkeypatch, lambda name, root: make_cifar(root, name))
    root = tmp_path / "not-yet"
    cfg = dataset_cfg("cifar100", root=str(root), download=True)
    check_source(cfg)  # nothing on disk yet: only the root setting is checked
    source = build_source(cfg, "test")
    assert calls == [("cifar100", str(root), False, True)]
    assert len(source) == 3 and len(source.classes) == 100


def test_cifar_download_failure_is_a_source_error(tmp_path, monkeypatch):
    def offline(name, root):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nno network")

    fake_torchvision(monkeypatch, offline)
    with pytest.raises(SourceError) as excinfo:
        build_source(dataset_cfg("cifar10", root=str(tmp_path), download=True), "train")
    assert_one_line_error(excinfo, tmp_path, "no network", "cifar-10-python.tar.gz")


# --------------------------------------------------------------------------------------------------
# Folder datasets
# --------------------------------------------------------------------------------------------------


def test_tiny_imagenet(tmp_path):
    root = make_tiny(tmp_path / "tiny-imagenet-200")
    cfg = dataset_cfg("tiny_imagenet", root=str(root), num_classes=3)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    wnids = sorted(TINY_WNIDS)
    assert train.classes == test.classes == wnids  # sorted WNIDs, not the order of wnids.txt
    assert train.class_names[0] == "thing 1, other name"
    assert train.targets == [0, 0, 1, 1, 2, 2]
    assert train.path(0) == str(root / "train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG")
    # val_annotations order is n3,n1,n2,n3,n1,n2: the test split groups by class, files sorted in a class.
    assert test.targets == [0, 0, 1, 1, 2, 2]
    assert [Path(test.path(i)).name for i in range(len(test))] == [f"val_{n}.JPEG" for n in (1, 4, 2, 5, 0, 3)]
    grayscale = train.targets.index(wnids.index(TINY_WNIDS[0]))  # the grayscale JPEG, converted to RGB
    for source, i in ((train, grayscale), (test, 0)):
        image, label = source[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and label == source.targets[i]


@pytest.mark.parametrize("name", ["imagenette", "imagewoof", "imagenet1k"])
def test_wnid_folders(tmp_path, name):
    root = make_class_folders(tmp_path / name)
    cfg = dataset_cfg(name, root=str(root), num_classes=3)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert train.classes == test.classes == sorted(FOLDER_CLASSES)  # bird, cat, dog
    assert train.targets == test.targets == [0, 0, 1, 1, 2, 2]  # notes.txt and ._img_0.jpg are skipped
    assert Path(test.path(0)).parent == root / "val" / "bird"
    for i in range(len(train)):
        image, label = train[i]
        j, k = i % 2, FOLDER_CLASSES.index(train.classes[label])
        assert image.dtype == torch.uint8 and image.shape == (3, 6 + k, 8 + j)  # native size kept


def test_imagefolder_custom_dirs_and_grayscale(tmp_path):
    root = make_class_folders(tmp_path / "mine", split_dirs=("training", "holdout"))
    cfg = dataset_cfg("imagefolder", root=str(root), train_dir="training", test_dir="holdout",
                      channels=1, mean=[0.5], std=[0.25])
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert train.classes == ["bird", "cat", "dog"] and len(train) == len(test) == 6
    assert train.channels == 1 and all(train[i][0].shape[0] == 1 for i in range(len(train)))
    rgb = build_source(dataset_cfg("imagefolder", root=str(root), train_dir="training", test_dir="holdout"), "test")
    assert rgb.channels == 3 and rgb[0][0].shape[0] == 3


def test_sources_pickle_without_open_files(tmp_path):
    make_cifar(tmp_path / "c", "cifar10")
    array_source = build_source(dataset_cfg("cifar10", root=str(tmp_path / "c")), "test")
    file_source = build_source(dataset_cfg("imagefolder", root=str(make_class_folders(tmp_path / "f", ("train", "test")))), "train")
    for source in (array_source, file_source):
        source[1]  # a loaded item must leave nothing open behind
        copy = pickle.loads(pickle.dumps(source))
        assert copy.classes == source.classes and copy.targets == source.targets
        assert torch.equal(copy[1][0], source[1][0])
    assert isinstance(file_source, FileSource)


def test_undecodable_file_fails_on_load_naming_it(tmp_path):
    root = make_class_folders(tmp_path / "data", ("train", "test"))
    broken = root / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    cfg = dataset_cfg("imagefolder", root=str(root))
    check_source(cfg)  # the layout is fine; check_source decodes nothing
    source = build_source(cfg, "train")
    index = [source.path(i) for i in range(len(source))].index(str(broken))
    with pytest.raises(SourceError) as excinfo:
        source[index]
    assert_one_line_error(excinfo, broken)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


ERROR_CASES = {}  # id -> case(tmp_path) -> (cfg, strings the message must contain)


def error_case(case_id):
    def register(case):
        ERROR_CASES[case_id] = case
        return case

    return register


def tiny(tmp_path):
    """A valid miniature tiny-imagenet-200 and its config, for a case to break."""
    root = make_tiny(tmp_path / "tiny")
    return root, dataset_cfg("tiny_imagenet", root=str(root), num_classes=3)


def folders(tmp_path, name, split_dirs=("train", "val")):
    root = make_class_folders(tmp_path / name, split_dirs)
    return root, dataset_cfg(name, root=str(root), num_classes=None if name == "imagefolder" else 3)


def cifar(tmp_path, name):
    make_cifar(tmp_path, name)
    return tmp_path, dataset_cfg(name, root=str(tmp_path))


def empty_folder(folder: Path) -> Path:
    for item in folder.iterdir():
        item.unlink()
    return folder


def add_annotation(root: Path, line: str) -> Path:
    notes = root / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text() + line + "\n")
    return notes


for _name in ("cifar10", "cifar100", "tiny_imagenet", "imagenette", "imagewoof", "imagenet1k", "imagefolder"):
    error_case(f"root-null-{_name}")(lambda tmp_path, name=_name: (dataset_cfg(name), ["dataset.root"]))


@error_case("root-missing")
def _(tmp_path):
    return dataset_cfg("imagenet1k", root=str(tmp_path / "nope")), [tmp_path / "nope", "does not exist"]


@error_case("root-is-a-file")
def _(tmp_path):
    (tmp_path / "f").write_text("x")
    return dataset_cfg("tiny_imagenet", root=str(tmp_path / "f")), [tmp_path / "f", "not a folder"]


@error_case("root-with-tilde")
def _(tmp_path):
    return dataset_cfg("imagenette", root="~/hald-no-such-dir"), [os.path.expanduser("~/hald-no-such-dir")]


@error_case("tiny-wnids-missing")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    (root / "wnids.txt").unlink()
    return cfg, [root / "wnids.txt"]


@error_case("tiny-val-annotations-missing")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    (root / "val" / "val_annotations.txt").unlink()
    return cfg, [root / "val" / "val_annotations.txt"]


@error_case("tiny-val-images-missing")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    (root / "val" / "images").rename(root / "val" / "imgs")
    return cfg, [root / "val" / "images"]


@error_case("tiny-wnid-without-train-folder")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS + ("n09999999",)))
    cfg.num_classes = 4
    return cfg, [root / "train" / "n09999999" / "images", "n09999999"]


@error_case("tiny-empty-class")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    return cfg, [empty_folder(root / "train" / TINY_WNIDS[1] / "images")]


@error_case("tiny-num-classes")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    cfg.num_classes = 200
    return cfg, [root / "wnids.txt", "found 3 classes", "num_classes=200"]


@error_case("tiny-unknown-val-wnid")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    return cfg, [add_annotation(root, "val_0.JPEG\tn07777777\t0\t0\t1\t1"), "n07777777"]


@error_case("tiny-missing-val-file")
def _(tmp_path):
    root, cfg = tiny(tmp_path)
    add_annotation(root, f"val_99.JPEG\t{TINY_WNIDS[0]}\t0\t0\t1\t1")
    return cfg, [root / "val" / "images" / "val_99.JPEG"]


@error_case("folder-num-classes")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagenette")
    cfg.num_classes = 10
    return cfg, [root / "train", "found 3 classes", "num_classes=10"]


@error_case("folder-num-classes-imagefolder")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagefolder", ("train", "test"))
    cfg.num_classes = 4
    return cfg, [root / "train", "found 3 classes"]


@error_case("folder-empty-train-class")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagefolder", ("train", "test"))
    return cfg, [empty_folder(root / "train" / "cat"), "no images"]


@error_case("folder-empty-val-class")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagenet1k")
    return cfg, [empty_folder(root / "val" / "dog"), "no images"]


@error_case("folder-test-class-missing")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagenette")
    empty_folder(root / "val" / "cat").rmdir()
    return cfg, [root / "val", root / "train", "missing: cat /"]


@error_case("folder-test-class-extra")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagefolder", ("train", "test"))
    (root / "test" / "zebra").mkdir()
    return cfg, [root / "test", "extra: zebra"]


@error_case("folder-flat-val")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagenet1k")
    for folder in list((root / "val").iterdir()):
        for item in folder.iterdir():
            item.rename(root / "val" / f"{folder.name}_{item.name}")
        folder.rmdir()
    return cfg, [root / "val", "sort them into class folders"]


@error_case("folder-train-dir-missing")
def _(tmp_path):
    root, cfg = folders(tmp_path, "imagefolder", ("train", "test"))
    cfg.train_dir = "training"
    return cfg, [root / "training"]


@error_case("folder-no-class-folders")
def _(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    return dataset_cfg("imagefolder", root=str(tmp_path)), [tmp_path / "train", "no class folders"]


@error_case("cifar10-batch-missing")
def _(tmp_path):
    root, cfg = cifar(tmp_path, "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    return cfg, [root / "cifar-10-batches-py" / "data_batch_3", "dataset.download=true"]


@error_case("cifar100-folder-missing")
def _(tmp_path):
    return dataset_cfg("cifar100", root=str(tmp_path)), [tmp_path / "cifar-100-python", "dataset.download=true"]


@error_case("cifar10-num-classes")
def _(tmp_path):
    root, cfg = cifar(tmp_path, "cifar10")
    cfg.num_classes = 11
    return cfg, [root / "cifar-10-batches-py" / "batches.meta", "found 10 classes"]


@error_case("cifar100-corrupt-meta")
def _(tmp_path):
    root, cfg = cifar(tmp_path, "cifar100")
    (root / "cifar-100-python" / "meta").write_bytes(b"garbage")
    return cfg, [root / "cifar-100-python" / "meta"]


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_layout_errors(tmp_path, case):
    cfg, needles = ERROR_CASES[case](tmp_path)
    with pytest.raises(SourceError) as excinfo:
        check_source(cfg)
    assert_one_line_error(excinfo, *needles)
    with pytest.raises(SourceError):  # build_source checks first
        build_source(cfg, "train")


def test_malformed_cifar_batch_fails_on_build(tmp_path):
    make_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar_pickle(bad, {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "py2")
    with pytest.raises(SourceError) as excinfo:
        build_source(dataset_cfg("cifar10", root=str(tmp_path)), "test")
    assert_one_line_error(excinfo, bad, "3072")


@pytest.mark.parametrize(
    "cfg, needles",
    [
        ({"name": "mnist"}, ["unknown dataset 'mnist'", "mnist5k", "cifar10", "imagefolder"]),
        ({"channels": 3}, ["unknown dataset 'None'"]),
        ({"name": "mnist5k", "channels": 3, "mean": [0, 0, 0], "std": [1, 1, 1]}, ["dataset.channels=3"]),
        ({"name": "mnist5k", "train_per_class": 500}, ["train_per_class=500"]),
        ({"name": "mnist5k", "num_classes": 100}, ["num_classes=100"]),
        ({"name": "cifar10", "channels": 1, "mean": [0.5], "std": [0.5]}, ["dataset.channels=1"]),
        ({"name": "imagefolder", "root": "/x", "channels": 2}, ["dataset.channels=2"]),
        ({"name": "imagefolder", "root": "/x", "channels": 1}, ["dataset.mean has 3 values"]),
    ],
)
def test_config_errors(cfg, needles):
    folder_defaults = OmegaConf.to_container(OmegaConf.load(CONF / "imagefolder.yaml"))
    cfg = {**folder_defaults, **cfg} if cfg.get("name") == "imagefolder" else cfg
    with pytest.raises(SourceError) as excinfo:
        check_source(cfg)
    assert_one_line_error(excinfo, *needles)


def test_unknown_split():
    with pytest.raises(SourceError) as excinfo:
        build_source(dataset_cfg("mnist5k"), "val")
    assert_one_line_error(excinfo, "'val'")


# --------------------------------------------------------------------------------------------------
# class_names: the class order without listing images
# --------------------------------------------------------------------------------------------------


def standin_cfg(tmp_path: Path, name: str, style: str = "py2"):
    """The config of a miniature ``name`` written under tmp_path (mnist5k needs none)."""
    if name == "mnist5k":
        return dataset_cfg(name)
    if name.startswith("cifar"):
        make_cifar(tmp_path, name, style)
        return dataset_cfg(name, root=str(tmp_path))
    if name == "tiny_imagenet":
        return dataset_cfg(name, root=str(make_tiny(tmp_path / "tiny")), num_classes=3)
    split_dirs = ("train", "test") if name == "imagefolder" else ("train", "val")
    root = make_class_folders(tmp_path / name, split_dirs)
    return dataset_cfg(name, root=str(root), num_classes=None if name == "imagefolder" else 3)


@pytest.mark.parametrize("name, style", [(n, "py2") for n in DATASETS] + [("cifar10", "bytes"), ("cifar100", "bytes")])
def test_class_names_equal_the_sources_classes(tmp_path, name, style):
    cfg = standin_cfg(tmp_path, name, style)
    assert class_names(cfg) == build_source(cfg, "train").classes == build_source(cfg, "test").classes


@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenette", "imagenet1k", "imagefolder"])
def test_class_names_lists_no_image_folder(tmp_path, monkeypatch, name):
    cfg = standin_cfg(tmp_path, name)
    expected = build_source(cfg, "train").classes
    root = Path(cfg.root)
    listed = []
    for function in ("scandir", "listdir"):  # os.walk lists through os.scandir
        real = getattr(os, function)
        spy = lambda path=".", real=real: listed.append(Path(os.fspath(path))) or real(path)  # noqa: E731
        monkeypatch.setattr(os, function, spy)
    assert class_names(cfg) == expected
    # At most ROOT/<split dir> is listed: never a class folder, where the images are.
    under_root = [p.relative_to(root) for p in listed if p.is_relative_to(root)]
    assert all(len(p.parts) <= 1 for p in under_root), under_root


def test_class_names_of_an_unknown_dataset():
    with pytest.raises(SourceError) as excinfo:
        class_names({"name": "mnist"})
    assert_one_line_error(excinfo, "unknown dataset 'mnist'")
