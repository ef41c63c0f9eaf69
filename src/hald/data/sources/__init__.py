"""The real datasets (train and test splits) that hald distills from and evaluates on.

Every dataset is an :class:`ImageSource`: ``(uint8 tensor [C,H,W], label)`` pairs at the images' native
size, with ``classes`` in a fixed, documented order (label ``k`` means ``classes[k]``). Transforms
(resize, crop, normalisation) belong to the caller; a source only decodes.

Two storage kinds exist: in-memory arrays (:class:`ArraySource`) for the small benchmarks (mnist5k,
cifar10, cifar100), and files decoded lazily with PIL (:class:`FileSource`) for the folder datasets
(tiny_imagenet, imagenette, imagenet1k, imagefolder), because ImageNet does not fit in RAM.

Layout of the package: ``base`` (the dataset classes and :class:`SourceError`), ``checks`` and ``files``
(layout checks and image listing shared by the families), ``registry`` (:func:`check_source`,
:func:`build_source`, :func:`class_names`), and one module per dataset family. The families register
themselves when imported, below; they import only the modules above them, never this package.
"""

from hald.data.sources.base import ArraySource, FileSource, ImageSource, SourceError
from hald.data.sources.registry import SOURCES, SPLITS, build_source, check_source, class_names, register_source

# Imported for their registrations.
from hald.data.sources import cifar, folders, mnist5k, tiny_imagenet  # noqa: E402,F401  isort: skip

__all__ = [
    "SOURCES",
    "SPLITS",
    "ArraySource",
    "FileSource",
    "ImageSource",
    "SourceError",
    "build_source",
    "check_source",
    "class_names",
    "register_source",
]
