"""Distillation methods: each makes (or names) a folder of distilled images for the pipeline.

A method is a function (cfg, context) -> manifest fields, registered in METHODS; recover methods (SRe2L,
CV-DD) and RDED selection plug in here in their own modules.
"""
from hald.distill.subset import METHODS, distill_random  # noqa: F401
