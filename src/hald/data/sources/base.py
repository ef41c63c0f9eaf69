"""What every dataset family builds: :class:`ImageSource` and its two storage kinds, and :class:`SourceError`.

This module imports nothing else from the package, so the families, the checks and the registry can all
import it without a cycle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hald.errors import InputError


class SourceError(InputError):
    """A dataset cannot be used as configured. The message is always a single line."""

    def __init__(self, message: str) -> None:
        # Messages embed paths and third-party exception texts; log parsers and the CLI expect one line.
        super().__init__(" ".join(str(message).splitlines()))


def fail(dataset: str, problem: str, expected: str, fix: str) -> SourceError:
    """The house format of a dataset error: cause; expected layout; fix."""
    return SourceError(f"dataset '{dataset}': {problem}; expected {expected}; fix: {fix}")


class ImageSource(Dataset):
    """A labelled image dataset: ``source[i] -> (uint8 tensor [C,H,W], label)``.

    Attributes:
        name: registry key of the dataset it came from.
        split: "train" or "test".
        classes: class identifiers (WNIDs, folder names, CIFAR names); label k means classes[k].
        class_names: human-readable names, same order (equal to ``classes`` when none are known).
        targets: label of every item.
        channels: 1 (grayscale) or 3 (RGB).
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        channels: int,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.classes = [str(c) for c in classes]
        self.class_names = [str(c) for c in class_names] if class_names is not None else list(self.classes)
        self.channels = int(channels)
        # __getitem__ reads labels from a numpy array, not from the list: touching Python objects in
        # forked DataLoader workers bumps their refcounts and copies the pages (memory grows per worker).
        self._labels = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.targets = self._labels.tolist()
        if len(self._labels) and not (0 <= self._labels.min() and self._labels.max() < len(self.classes)):
            raise ValueError(f"{name}/{split}: labels outside [0, {len(self.classes)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._image(i), int(self._labels[i])

    def _image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, "
            f"classes={len(self.classes)}, channels={self.channels})"
        )


class ArraySource(ImageSource):
    """Images held in memory as one uint8 array [N, C, H, W] (the small benchmarks fit in RAM)."""

    def __init__(self, name, split, classes, targets, images: np.ndarray, class_names=None) -> None:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4:
            raise ValueError(f"{name}/{split}: images must be [N,C,H,W], got shape {images.shape}")
        super().__init__(name, split, classes, targets, images.shape[1], class_names)
        if len(images) != len(self._labels):
            raise ValueError(f"{name}/{split}: {len(images)} images but {len(self._labels)} labels")
        self.images = images

    def _image(self, i: int) -> torch.Tensor:
        # A copy, so that in-place augmentations by the caller cannot corrupt the dataset.
        return torch.from_numpy(self.images[i].copy())


class FileSource(ImageSource):
    """Images stored as files under ``root``, decoded with PIL on access (ImageNet does not fit in RAM).

    Paths are kept root-relative in a fixed-width bytes array: compact (ImageNet has 1.28M files) and
    free of per-item Python objects, so the dataset pickles quickly to spawned workers.
    """

    def __init__(self, name, split, classes, targets, root: str, files: Sequence[str], channels: int,
                 class_names=None) -> None:
        super().__init__(name, split, classes, targets, channels, class_names)
        if self.channels not in (1, 3):
            raise ValueError(f"{name}/{split}: channels must be 1 or 3, got {channels}")
        if len(files) != len(self._labels):
            raise ValueError(f"{name}/{split}: {len(files)} files but {len(self._labels)} labels")
        self.root = str(root)
        # os.fsencode round-trips any file name the OS gave us, even non-UTF-8 ones.
        self._files = np.array([os.fsencode(f) for f in files], dtype=bytes)

    def path(self, i: int) -> str:
        """Absolute path of item ``i``."""
        return os.path.join(self.root, os.fsdecode(self._files[i]))

    def _image(self, i: int) -> torch.Tensor:
        path = self.path(i)
        # Converting normalises what real JPEG collections contain: grayscale, CMYK, palette, RGBA.
        mode = "L" if self.channels == 1 else "RGB"
        try:
            with Image.open(path) as raw:
                pixels = np.array(raw.convert(mode))
        except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            raise fail(
                self.name,
                f"cannot decode image '{path}' ({type(err).__name__}: {err})",
                "a readable image file",
                "replace or delete the broken file",
            ) from err
        if pixels.ndim == 2:
            pixels = pixels[None]
        else:
            pixels = pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(pixels))
