"""Distillation methods: each makes (or, `folder`, opens) a set of distilled images (`distill=<name>`).

- `random` (subset.py): a seeded random subset of real images;
- `rded` (rded.py): the teacher's best real crops, stitched;
- `sre2l`, `sre2lpp`, `cvdd` (recover.py): images recovered by BatchNorm-statistics matching with one
  teacher or a committee (committee.py, bn_matching.py, augment.py), resumable per unit (hald/units.py);
- `fadrm`, `fadrm_plus` (fadrm.py): recover with data-residual matching at several resolutions (FADRM / FADRM+);
- `cim` (cim.py, cim_matching.py): real-image mosaics refined to keep each quadrant's features (CIM);
- `folder` (folder.py): an existing set on disk, keyed by its content.
Each registers one record (registry.py) that says everything the pipeline asks of it.
"""
from hald.distill.registry import METHODS, Cost, Method, Work, check_method, method_of, register  # noqa: F401
from hald.distill import subset, rded, recover, fadrm, cim, folder  # noqa: F401,E402  (importing registers the methods)
