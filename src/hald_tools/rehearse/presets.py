"""The paper presets the rehearsal runs, and the counts it shrinks for each (nothing else changes).

Shrunk, and only these: distilled images per class (ipc 1), soft-label passes (Tiny 2, IN-1K 1), student
epochs (4: S6 still switches soft -> hard -> soft) of 3 steps each (Trainer limit_train_batches), one batch
of test images per student evaluation (limit_val/test_batches: 200 Tiny, 256 IN-1K images), one crop pair
per image for the crop-consistency probe, teacher squeeze steps (1), RDED's candidates (mipc, num_crops: as
few as its selection needs), recover iterations (1) and recover units run (1: the other units keep their
RDED init, recorded with 0 iterations), the CV-DD prior runs' ipc / passes / epochs, real images per class
in the stand-in data, and loader workers (0: this machine has 2 cores). Never the shape: all 200 / 1,000 classes in every label row, the real resolution and layout,
the paper's models, batch sizes, T, codecs, teacher modes and schedules.
Two options differ and are named in the table: cvdd_in1k takes CV-DD's published priors
(distill/priors=cvdd_v1_in1k; its measured priors, one SRe2L++ set and one student per pool teacher, are
rehearsed at Tiny scale by cvdd_tiny), and the IN-1K presets after hald_in1k_slc50 turn the crop-consistency
probe off (an analysis that does not change training).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Stand-in data: real images per class (train, test); RDED at 224 px keeps ipc x 2^2 = 4 crops per class.
STANDIN = {"tiny": {"train": 10, "test": 1}, "in1k": {"train": 4, "test": 1}}
PUBLISHED_IPC = 1      # the stand-in published sets' images per class (the real ones: 10 in HALD's scripts)
PUBLISHED_FULL_IPC = 10

COMMON = ["ipc=1", "train.epochs=4", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
          "+trainer.limit_test_batches=1", "train.consistency_pairs=1", "train.num_workers=0",
          "labels.num_workers=0", "teacher.squeeze.num_workers=0", "teacher.squeeze.max_steps=1"]
FAMILY = {"tiny": ["dataset.root={tiny}", "slc=2"], "in1k": ["dataset.root={in1k}", "slc=1"]}
RDED = {"tiny": ["distill.mipc=2", "distill.num_crops=1"], "in1k": ["distill.mipc=4", "distill.num_crops=1"]}
RECOVER = ["distill.iterations=1", "distill.units_run=1"]
# The crop-consistency probe (an analysis at each phase end, no effect on training) costs a minute per phase
# end at 224 px on this CPU even with one pair: it runs in hald_in1k_slc50 and the Tiny presets only.
NO_PROBE = "train.crop_consistency=false"
PROBE_NOTE = "the crop-consistency probe is off (train.crop_consistency=false; rehearsed in hald_in1k_slc50)"


@dataclass(frozen=True)
class Preset:
    name: str
    family: str                       # tiny | in1k
    shrink: tuple[str, ...] = ()      # overrides beyond COMMON + FAMILY
    published: bool = False           # distill=folder on a published set (its IPC is the folder's)
    notes: tuple[str, ...] = field(default=())

    def overrides(self, paths: dict[str, str]) -> list[str]:
        extra = [f"distill.path={paths['published']}"] if self.published else []
        return [*COMMON, *(o.format(**paths) for o in FAMILY[self.family]), *self.shrink, *extra]


PRESETS = [
    Preset("hald_tiny_slc50", "tiny", tuple(RDED["tiny"])),
    Preset("hald_tiny_slc100", "tiny", tuple(RDED["tiny"])),
    Preset("cvdd_tiny", "tiny", ("distill.rded.mipc=2", "distill.rded.num_crops=1", *RECOVER,
                                 "distill.prior.ipc=1", "distill.prior.slc=1", "distill.prior.epochs=1")),
    Preset("hald_in1k_slc50", "in1k", tuple(RDED["in1k"])),
    Preset("hald_in1k_slc100", "in1k", (*RDED["in1k"], NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("hald_in1k_285mb", "in1k", (*RDED["in1k"], NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("hald_in1k_sre2l", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("hald_in1k_lpld", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("hald_in1k_fadrm", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("hald_in1k_rded", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("cvdd_in1k", "in1k", ("distill.rded.mipc=4", "distill.rded.num_crops=1", *RECOVER,
                                 "distill/priors=cvdd_v1_in1k", NO_PROBE),
           notes=("priors: CV-DD's published values (distill/priors=cvdd_v1_in1k); measured priors are "
                  "rehearsed by cvdd_tiny", PROBE_NOTE)),
]
BY_NAME = {p.name: p for p in PRESETS}
