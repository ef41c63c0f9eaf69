"""The codec base class and the registry that the codec families (floats, topk, quant) add themselves to."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields
from typing import Any, Callable, ClassVar, Mapping

import torch

# name (the `name:` of conf/codec/*.yaml and of a store manifest's codec) -> class
CODECS: dict[str, type[Codec]] = {}


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator: file a codec class under `name`, so configs and manifests can name it."""
    def add(cls: type[Codec]) -> type[Codec]:
        if name in CODECS:  # two families claiming one name would make stored labels ambiguous
            raise ValueError(f"codec '{name}' registered twice ({CODECS[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        CODECS[name] = cls
        return cls
    return add


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise ValueError(f"unknown codec '{name}'; fix: labels.codec.name=one of {sorted(CODECS)} (or a codec "
                         f"config: codec=fp16|fp32|topk|quant|topk_quant|...)")
    return CODECS[name]


class Codec(ABC):
    """A soft-label codec: probs [n, C] -> a dict of per-row tensors (first dimension n, so a record is a
    row slice) and back. Subclasses are frozen dataclasses whose fields are their parameters, declared in
    the order spec() lists them: the spec is hashed into cache keys and written in manifests, so a field's
    name, order or default never changes once stores exist."""
    name: ClassVar[str]  # set by register_codec

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Codec:
        """The codec a `{"name": ..., params}` mapping names (a config, or a manifest's spec())."""
        c = dict(cfg)
        family = codec_class(c["name"])
        # The config group passes every codec's keys (k and bits reach a float codec): each takes its own.
        return family(**{f.name: c[f.name] for f in fields(family) if f.name in c})

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def tag(cls, c: Mapping[str, Any]) -> str:
        """A short name of a codec config for run names (its parameters may still be `auto`), e.g. top5q4."""
        return cls.name

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.spec().items())

    @abstractmethod
    def row_bytes(self, num_classes: int) -> int:
        """The exact number of bytes one stored label takes (the budget planner sizes stores with it)."""

    @abstractmethod
    def encode(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """probs [n, C] -> per-row tensors, each with first dimension n."""

    @abstractmethod
    def decode(self, t: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        """Stored rows -> float32 probabilities [n, C] (rows sum to 1 for every lossy codec)."""


def make_codec(name: str, **params: Any) -> Codec:
    """A codec from keyword parameters, for code (bench, tests). Unlike from_config, a parameter the codec
    does not have is an error (TypeError): here it can only be a mistake."""
    return codec_class(name)(**params)
