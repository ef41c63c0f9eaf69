"""Distillation methods: each makes a folder of distilled images for the pipeline (`distill=<name>`).

- `random` (subset.py): a seeded random subset of real images;
- `rded` (rded.py): the teacher's best real crops, stitched;
- `sre2l`, `sre2lpp`, `cvdd` (recover.py): images recovered by BatchNorm-statistics matching with one
  teacher or a committee (committee.py, bn_matching.py, augment.py), resumable per unit (hald/units.py);
- `folder` is handled by the pipeline (an existing set on disk).
"""
from hald.distill.registry import CHECKS, COLLECTIVE, METHODS, check_method, register  # noqa: F401
from hald.distill import subset, rded, recover  # noqa: F401,E402  (importing registers the methods)
