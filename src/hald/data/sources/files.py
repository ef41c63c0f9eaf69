"""Which files are images and how class folders are listed: torchvision's ImageFolder rules, used by every
folder dataset and by the distilled sets (hald.data.distilled), so that all of them agree.

Two additions to torchvision: dot-files and dot-named class folders are skipped (macOS "._x.jpg" resource
forks look like images but are not; ".ipynb_checkpoints" is not a class), and a folder can be asked whether
it holds an image without listing all of it.
"""

from __future__ import annotations

import os

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset


def is_image(path: str) -> bool:
    """An image by its name: one of torchvision's IMG_EXTENSIONS, in any case (ImageNet's ".JPEG")."""
    name = os.path.basename(path)
    return not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)


def class_folders(folder: str) -> list[str]:
    """Names of the class folders in ``folder``, in torchvision's ImageFolder order (sorted, case-sensitive)."""
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:  # torchvision's way of saying "no class folder"
        return []
    return [c for c in classes if not c.startswith(".")]


def has_image(folder: str) -> bool:
    """Whether ``folder`` (sub-folders included, as in :func:`list_images`) holds an image.

    Stops at the first one: checking 1000 ImageNet folders must not list 1.28M files.
    """
    return any(is_image(f) for _, _, names in os.walk(folder, followlinks=True) for f in names)


def list_images(root: str, split_dir: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Root-relative paths and labels of the images in ``root/split_dir/<class>/``, label k = classes[k].

    Items are grouped by class and sorted by path within a class (torchvision's make_dataset order).
    """
    samples = make_dataset(os.path.join(root, split_dir), {c: k for k, c in enumerate(classes)}, is_valid_file=is_image)
    return [os.path.relpath(path, root) for path, _ in samples], [label for _, label in samples]
