"""Soft-label codecs: how a row of C probabilities becomes bytes in a shard, and back.

Every codec maps probs [n, C] to a dict of per-row tensors (first dimension n, so a record is a row slice)
and back; `row_bytes(C)` is the exact number of bytes one stored label takes. Decoding is vectorised over
the rows and runs in the loader workers.

    float        fp32 / fp16 probabilities (lossless / fp16 rounding)                       floats.py
    topk         the k largest probabilities (fp16) and their class ids; the rest spread     topk.py
                 uniformly or dropped and the row renormalised
    quant        n-bit uniform quantisation with bit packing, of p on [0, 1] or of log p     quant.py
                 on a per-row [min, max] range (relative precision, which flat T=20 labels need)
    topk_quant   topk with n-bit log-space values                                           quant.py

A codec is built from a config or manifest mapping with `Codec.from_config({"name": ..., ...})`, or in code
with `make_codec(name, **params)`. A new codec is a frozen dataclass subclass of `Codec` (base.py) with
`@register_codec("name")`, in a module imported below.
"""
from hald.labels.codecs.base import CODECS, Codec, make_codec, register_codec
from hald.labels.codecs.bits import pack_bits, unpack_bits
from hald.labels.codecs.topk import index_dtype
from hald.labels.codecs import floats, quant, topk  # noqa: F401  (importing a family registers its codecs)

__all__ = ["CODECS", "Codec", "index_dtype", "make_codec", "pack_bits", "register_codec", "unpack_bits"]
