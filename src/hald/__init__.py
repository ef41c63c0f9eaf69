"""hald: soft-label dataset distillation (HALD, CV-DD, SRe2L, RDED) on Lightning + Hydra."""

__version__ = "0.1.0"
