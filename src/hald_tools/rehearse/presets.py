"""The paper presets the rehearsal runs, and the counts it shrinks for each (nothing else changes).

Shrunk, and only these: distilled images per class (ipc 1), soft-label passes (IN-1K 1, the others 2), student
epochs (4: S6 still switches soft -> hard -> soft) of 3 steps each (Trainer limit_train_batches), one batch
of test images per student evaluation (limit_val/test_batches: 200 Tiny, 256 IN-1K images), one crop pair
per image for the crop-consistency probe, teacher squeeze steps (1), RDED's candidates (mipc, num_crops: as
few as its selection needs), recover iterations (1; FADRM: 1 step per stage, the stages and their resolutions
kept) and recover units run (1: the other units keep their RDED init, recorded with 0 iterations), CIM's real
images scored per class (mipc: the ipc x 4 it tiles), steps per class (1) and classes optimised (1: the others
keep their initial mosaic), the CV-DD prior runs' ipc / passes / epochs, real images per class in the stand-in
data, and loader workers (0: this machine has 2 cores). Never the shape: all 10 / 100 / 200 / 1,000 classes in
every label row, the real resolution and layout, the paper's models, batch sizes, T, codecs, teacher modes and
schedules.
Two options differ and are named in the table: cvdd_in1k and cvdd_in1k_head take CV-DD's published priors
(distill/priors=cvdd_v1_in1k / cvdd_head_in1k; their measured priors, one SRe2L++ set and one student per pool
teacher, are rehearsed at Tiny scale by cvdd_tiny), and the IN-1K presets after hald_in1k_slc50 turn the crop-consistency
probe off (an analysis that does not change training).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Stand-in data: real images per class (train, test); RDED at 224 px keeps ipc x 2^2 = 4 crops per class.
# ImageNette / ImageWoof: 8 x 10 classes, so the teacher squeeze's batch of 64 fills one step.
STANDIN = {"tiny": {"train": 10, "test": 1}, "in1k": {"train": 4, "test": 1}, "cifar100": {"train": 10, "test": 1},
           "nette": {"train": 8, "test": 1}, "woof": {"train": 8, "test": 1}}


@dataclass(frozen=True)
class Family:
    """A dataset family of the rehearsal: the dataset it stands in for (its `dataset.name`), its classes and
    the real dataset's (train, test) sizes, which scale the rehearsal's measured seconds to the full run."""
    dataset: str
    classes: int
    splits: tuple[int, int]


FAMILIES = {
    "tiny": Family("tiny_imagenet", 200, (100_000, 10_000)),
    "in1k": Family("imagenet1k", 1000, (1_281_167, 50_000)),
    "cifar100": Family("cifar100", 100, (50_000, 10_000)),
    "nette": Family("imagenette", 10, (9_469, 3_925)),      # imagenette2: train / val
    "woof": Family("imagewoof", 10, (9_025, 3_929)),        # imagewoof2: train / val
}
PUBLISHED_IPC = 1      # the stand-in published sets' images per class (the real ones: 10 in HALD's scripts)
PUBLISHED_FULL_IPC = 10

COMMON = ["ipc=1", "train.epochs=4", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
          "+trainer.limit_test_batches=1", "train.consistency_pairs=1", "train.num_workers=0",
          "labels.num_workers=0", "teacher.squeeze.num_workers=0", "teacher.squeeze.max_steps=1"]
FAMILY = {"tiny": ["dataset.root={tiny}", "slc=2"], "in1k": ["dataset.root={in1k}", "slc=1"],
          "cifar100": ["dataset.root={cifar100}", "slc=2"], "nette": ["dataset.root={nette}", "slc=2"],
          "woof": ["dataset.root={woof}", "slc=2"]}
RDED = {"tiny": ["distill.mipc=2", "distill.num_crops=1"], "in1k": ["distill.mipc=4", "distill.num_crops=1"]}
RECOVER = ["distill.iterations=1", "distill.units_run=1"]
# FADRM / FADRM+: one Adam step per stage (the stages, their resolutions and the residual blends stay), one unit,
# the RDED init's candidates as few as its selection needs (factor 1 at <= 64 px: 1 crop; 2 at 224 px: 4).
FADRM_INIT = {"small": ("distill.rded.mipc=2", "distill.rded.num_crops=1"),
              "224": ("distill.rded.mipc=4", "distill.rded.num_crops=1")}


def fadrm(stages: int, size: str) -> tuple[str, ...]:
    return (f"distill.budgets=[{','.join(['1'] * stages)}]", "distill.units_run=1", *FADRM_INIT[size])


# CIM: ipc 1 tiles 1 x 2^2 = 4 real images per class, so 4 are scored; one step of one class.
CIM = ("distill.mipc=4", "distill.iterations=1", "distill.units_run=1")
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
    Preset("hald_in1k_fadrm", "in1k", (*fadrm(4, "224"), NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("hald_in1k_rded", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("cvdd_in1k", "in1k", ("distill.rded.mipc=4", "distill.rded.num_crops=1", *RECOVER,
                                 "distill/priors=cvdd_v1_in1k", NO_PROBE),
           notes=("priors: CV-DD's published values (distill/priors=cvdd_v1_in1k); measured priors are "
                  "rehearsed by cvdd_tiny", PROBE_NOTE)),
    Preset("cvdd_in1k_head", "in1k", ("distill.rded.mipc=4", "distill.rded.num_crops=1", *RECOVER,
                                      "distill/priors=cvdd_head_in1k", NO_PROBE),
           notes=("priors: CV-DD's published HEAD values (distill/priors=cvdd_head_in1k); measured priors are "
                  "rehearsed by cvdd_tiny", PROBE_NOTE)),
    Preset("hald_in1k_fadrm_folder", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("fadrm_plus_tiny", "tiny", fadrm(4, "small")),
    Preset("fadrm_tiny", "tiny", fadrm(2, "small")),
    Preset("fadrm_plus_cifar100", "cifar100", fadrm(4, "small")),
    Preset("fadrm_plus_in1k", "in1k", (*fadrm(4, "224"), NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("fadrm_plus_in1k_ipc50", "in1k", (*fadrm(4, "224"), NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("fadrm_in1k_ipc50", "in1k", (*fadrm(4, "224"), NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("fadrm_plus_nette", "nette", fadrm(4, "224")),
    Preset("fadrm_plus_woof", "woof", fadrm(4, "224")),
    Preset("cim_tiny_ipc50", "tiny", CIM),
    Preset("cim_in1k_ipc10", "in1k", (*CIM, NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("cim_in1k_ipc50", "in1k", (*CIM, NO_PROBE), notes=(PROBE_NOTE,)),
    Preset("lpqld_in1k_ipc10", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
    Preset("lpqld_in1k_ipc50", "in1k", (NO_PROBE,), published=True, notes=(PROBE_NOTE,)),
]
BY_NAME = {p.name: p for p in PRESETS}
