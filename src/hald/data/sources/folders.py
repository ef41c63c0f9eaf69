"""One folder per class: imagenette, imagewoof, imagenet1k and imagefolder (your own data).

The three share torchvision's ImageFolder layout, ``ROOT/<split dir>/<class>/<images>``; they differ only
in the names of the split folders and in what the messages tell the user. The train split's class
folders define the class order, and the test split must have exactly the same ones.
"""

from __future__ import annotations

import functools
import os

from torchvision.datasets.folder import IMG_EXTENSIONS

from hald.data.sources.base import FileSource, ImageSource, fail
from hald.data.sources.checks import check_num_classes, few, require_dir, require_root, setting
from hald.data.sources.files import class_folders, has_image, list_images
from hald.data.sources.registry import register_source

_PER_CLASS = {
    "imagenette": "one WNID folder per class, the extracted imagenette2 archive",
    "imagewoof": "one WNID folder per class, the extracted imagewoof2 archive",
    "imagenet1k": "1000 WNID folders in each; the flat official val/ sorted into class folders",
    "imagefolder": "the same class folders in both",
}


def _split_dirs(cfg, name: str) -> tuple[str, str]:
    """Names of the train and test subfolders of root."""
    if name == "imagefolder":
        return str(setting(cfg, "train_dir", "train")), str(setting(cfg, "test_dir", "test"))
    return "train", "val"


def _layout(cfg, name: str) -> str:
    train_dir, test_dir = _split_dirs(cfg, name)
    folder = "<class>" if name == "imagefolder" else "<wnid>"
    return f"ROOT/{train_dir}/{folder}/<images> and ROOT/{test_dir}/{folder}/<images> ({_PER_CLASS[name]})"


def _dir_fix(name: str) -> str:
    return "set dataset.root to the folder that contains it" + (
        " (or dataset.train_dir / dataset.test_dir to the subfolder names)" if name == "imagefolder" else "")


def _train_classes(cfg, name: str) -> tuple[str, list[str]]:
    """Root and the class folders of the train split: the class order. Lists no image file."""
    layout = _layout(cfg, name)
    root = require_root(cfg, name, layout)
    train = os.path.join(root, _split_dirs(cfg, name)[0])
    require_dir(name, train, "train folder", layout, _dir_fix(name))
    classes = class_folders(train)
    if not classes:
        raise fail(name, f"train folder '{train}' has no class folders", layout, "put each class's images in its own folder")
    check_num_classes(cfg, name, len(classes), train, layout)
    return root, classes


def _check(cfg, name: str) -> None:
    layout = _layout(cfg, name)
    root, classes = _train_classes(cfg, name)
    train_dir, test_dir = _split_dirs(cfg, name)
    train, test = os.path.join(root, train_dir), os.path.join(root, test_dir)
    require_dir(name, test, "test folder", layout, _dir_fix(name))
    test_classes = class_folders(test)
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        flat = not test_classes and has_image(test)  # e.g. the official ImageNet val archive
        hint = "; its images lie directly in it, sort them into class folders first" if flat else ""
        raise fail(name, f"class folders of '{test}' differ from those of '{train}' "
                   f"(missing: {few(missing) or 'none'} / extra: {few(extra) or 'none'}{hint})",
                   layout, f"give '{test}' exactly the class folders of '{train}'")
    for split_dir in (train, test):
        for cls in classes:
            folder = os.path.join(split_dir, cls)
            if not has_image(folder):
                raise fail(name, f"class folder '{folder}' has no images ({'/'.join(IMG_EXTENSIONS)})",
                           layout, "add the class's images or remove the class from both splits")


def _classes(cfg, name: str) -> list[str]:
    return _train_classes(cfg, name)[1]


def _build(cfg, split: str, name: str) -> ImageSource:
    root, classes = _train_classes(cfg, name)
    split_dir = _split_dirs(cfg, name)[0 if split == "train" else 1]
    files, labels = list_images(root, split_dir, classes)
    return FileSource(name, split, classes, labels, root, files, int(setting(cfg, "channels", 3)))


for _name in _PER_CLASS:
    register_source(_name, check=functools.partial(_check, name=_name),
                    classes=functools.partial(_classes, name=_name))(functools.partial(_build, name=_name))
