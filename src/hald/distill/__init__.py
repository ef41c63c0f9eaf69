"""Distillation methods: each makes a folder of distilled images for the pipeline (`distill=<name>`).

- `random` (subset.py): a seeded random subset of real images;
- `rded` (rded.py): the teacher's best real crops, stitched;
- `sre2l`, `sre2lpp`, `cvdd` (recover.py): images recovered by BatchNorm-statistics matching with one
  teacher or a committee (committee.py, bn_matching.py, augment.py), resumable per unit (hald/units.py);
- `folder` is handled by the pipeline (an existing set on disk).
"""
from hald.distill.registry import CHECKS, COLLECTIVE, METHODS, check_method, register  # noqa: F401
from hald.distill import subset, rded, recover  # noqa: F401,E402  (importing registers the methods)


def real_images_needed(dcfg, dataset) -> int:
    """Real training images per class that a method must find (pre-flight checks the train split against it,
    before any teacher is trained): `random` takes ipc of them, RDED tiles ipc * factor^2 crops of distinct
    images, SRe2L++ / CV-DD initialise from RDED; SRe2L starts from noise."""
    ipc = int(dcfg.get("ipc") or 0)
    size = int(dataset["input_size"])
    if dcfg["method"] == "random":
        return ipc
    if dcfg["method"] == "rded":
        return ipc * rded.resolve_factor(dcfg.get("factor", "auto"), size) ** 2
    if dcfg["method"] in ("sre2l", "sre2lpp", "cvdd") and dcfg.get("init") == "rded":
        return ipc * rded.resolve_factor((dcfg.get("rded") or {}).get("factor", "auto"), size) ** 2
    return 0
