"""The config schema: dataclasses for the top level and every group, in Hydra's ConfigStore (`hald_schema`).

`validate(cfg)` merges a composed config into the schema (OmegaConf.merge onto OmegaConf.structured) and builds
the objects, so an unknown key (at any depth, added with `+` or set by a derived run), a wrong type, an unknown
choice or a non-positive count fails inside OmegaConf / `__post_init__` with the key named, before any work.
It checks a copy: the run goes on with the config as composed (the schema's defaults never enter a cache key).
A distill method's own keys are its record's `config` dataclass (distill/registry.py), checked the same way;
`trainer` is Lightning's Trainer(**kwargs), checked against its signature; `student` holds `_target_` nodes,
checked by building the phases and binding the partial objects' arguments.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hald.compute import ComputeConfig
from hald.errors import ConfigError
from hald.evaluate.protocols import ProtocolConfig
from hald.ranges import check_ranges, one_of, positive


@dataclass
class DatasetConfig:
    name: str = "mnist5k"
    root: Optional[str] = None
    download: bool = False
    num_classes: Optional[int] = None
    channels: int = 3
    input_size: int = 32
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    flip_p: float = 0.5
    test_resize: Optional[int] = None
    train_per_class: Optional[int] = None
    split_seed: Optional[int] = None
    train_dir: Optional[str] = None
    test_dir: Optional[str] = None

    def __post_init__(self) -> None:
        positive("dataset", channels=self.channels, input_size=self.input_size, num_classes=self.num_classes)


@dataclass
class ModelConfig:
    name: str = "convnet_w32"


@dataclass
class SqueezeConfig:
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    flip_p: float = 0.5
    num_workers: int = 0
    optimizer: Optional[str] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    schedule: Optional[str] = None
    warmup_epochs: Optional[int] = None
    warmup_decay: Optional[float] = None
    augment: Optional[str] = None
    pad: Optional[int] = None

    def __post_init__(self) -> None:
        positive("teacher.squeeze", epochs=self.epochs, batch_size=self.batch_size, max_steps=self.max_steps)


@dataclass
class TeacherConfig:
    models: List[str] = field(default_factory=lambda: ["convnet_w64"])
    checkpoints: Optional[List[str]] = None
    pretrained: Optional[str] = None
    weights: str = "equal"
    scores: Optional[List[float]] = None
    squeeze: SqueezeConfig = field(default_factory=SqueezeConfig)

    def __post_init__(self) -> None:
        one_of("teacher", "weights", self.weights, ("equal", "score"))
        if not self.models:
            raise ConfigError("teacher.models is empty; fix: teacher.models=[<a backbone name>]")


@dataclass
class LabelsConfig:
    slc: Any = None
    store: Optional[str] = None
    batch_size: int = 16
    temperature: float = 20.0
    teacher_mode: str = "eval"
    bssl_group_size: Optional[int] = None
    groups_per_forward: Any = "auto"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 4 / 3])
    flip_p: float = 0.5
    cutmix_alpha: float = 1.0
    seed: int = 42
    num_workers: int = 0
    codec: Any = None  # a codec's keys are its class's fields (labels/codecs): checked by check_codec

    def __post_init__(self) -> None:
        positive("labels", batch_size=self.batch_size, bssl_group_size=self.bssl_group_size)
        one_of("labels", "teacher_mode", self.teacher_mode, ("eval", "bssl"))
        if self.temperature <= 0:
            raise ConfigError(f"labels.temperature={self.temperature}; fix: a temperature > 0 (soft labels are "
                              f"softmax(z / T))")


@dataclass
class ScheduleConfig:
    preset: str = "hald"
    soft_fraction: float = 0.5
    block: Optional[int] = None
    pool: str = "run"
    segments: Optional[List[Any]] = None

    def __post_init__(self) -> None:
        one_of("schedule", "pool", self.pool, ("run", "segment", "pass"))
        positive("schedule", block=self.block)
        if not 0.0 <= self.soft_fraction <= 1.0:
            raise ConfigError(f"schedule.soft_fraction={self.soft_fraction}; fix: a fraction in [0, 1]")


@dataclass
class TrainConfig:
    epochs: int = 300
    soft_batch_size: int = 16
    hard_batch_size: int = 16
    micro_batch_size: Optional[int] = None
    eval_every: int = 0
    eval_offset: int = 0
    eval_phase_ends: bool = True
    eval_batch_size: int = 500
    checkpoint_every: int = 1
    resume: bool = False
    resume_across: List[str] = field(default_factory=list)
    num_workers: int = 0
    images_on_device: Any = "auto"
    images_on_device_max_gb: float = 4.0
    crop_consistency: bool = True
    consistency_pairs: int = 4
    grad_sim_every: int = 0
    grad_sim_pair: List[str] = field(default_factory=lambda: ["hard", "soft"])

    def __post_init__(self) -> None:
        positive("train", epochs=self.epochs, soft_batch_size=self.soft_batch_size,
                 hard_batch_size=self.hard_batch_size, micro_batch_size=self.micro_batch_size,
                 eval_batch_size=self.eval_batch_size, checkpoint_every=self.checkpoint_every,
                 consistency_pairs=self.consistency_pairs)
        one_of("train", "images_on_device", self.images_on_device, ("auto", True, False))


@dataclass
class SoftLossConfig:
    temperature: float = 20.0
    t2: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"soft_loss.temperature={self.temperature}; fix: a temperature > 0")


@dataclass
class HardLossConfig:
    cutmix_alpha: float = 1.0
    label_smoothing: float = 0.8
    temperature: float = 1.0
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"hard_loss.temperature={self.temperature}; fix: a temperature > 0")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ConfigError(f"hard_loss.label_smoothing={self.label_smoothing}; fix: a value in [0, 1]")


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    step_size: Optional[int] = None
    gamma: float = 0.1
    lr: Any = "auto"
    eta: Any = "auto"
    default_lr: float = 0.001
    default_eta: float = 1.0
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    on_phase_switch: str = "reset"

    def __post_init__(self) -> None:
        one_of("optimizer", "on_phase_switch", self.on_phase_switch, ("keep", "reset"))
        one_of("optimizer", "name", self.name, ("adamw", "sgd"))
        one_of("optimizer", "lr_schedule", self.lr_schedule, ("cosine", "step"))
        for key in ("lr", "eta"):
            v = getattr(self, key)
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ConfigError(f"optimizer.{key}={v}; fix: a number > 0, or auto")


@dataclass
class FairHardConfig:
    label_smoothing: float = 0.0
    cutmix_alpha: float = 0.0
    temperature: float = 1.0
    epochs: int = 300


@dataclass
class FairRealConfig:
    epochs: int = 10
    top1: Optional[float] = None


@dataclass
class EvaluateConfig:
    fair: bool = False
    lvsd: bool = False
    lvsd_crops: int = 64
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    weight: float = 0.5
    hard: FairHardConfig = field(default_factory=FairHardConfig)
    real: FairRealConfig = field(default_factory=FairRealConfig)

    def __post_init__(self) -> None:
        positive("evaluate", lvsd_crops=self.lvsd_crops)


@dataclass
class PathsConfig:
    root_dir: str = "."
    cache_dir: str = ".cache/artifacts"
    output_dir: Optional[str] = None


@dataclass
class HaldConfig:
    """The top level. `distill`, `trainer`, `logger` and `student` are open here and checked by their owners."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: Any = None
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    student: Any = None
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    soft_loss: SoftLossConfig = field(default_factory=SoftLossConfig)
    hard_loss: HardLossConfig = field(default_factory=HardLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: Dict[str, Any] = field(default_factory=dict)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    plugins: List[str] = field(default_factory=list)
    task_name: str = "hald"
    tags: List[str] = field(default_factory=list)
    seed: int = 0
    ipc: int = 10
    slc: Optional[int] = None
    label_budget: Any = None
    hydra: Any = None
    experiment: Any = None
    local: Any = None


OPEN = ("distill", "student", "logger", "hydra", "experiment", "local")  # checked elsewhere, or not ours
ConfigStore.instance().store(name="hald_schema", node=HaldConfig)


def _error(e: OmegaConfBaseException, where: str = "") -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    key = f"{where}.{key}" if where else key
    first = str(e).splitlines()[0]
    if "not in" in first:
        return ConfigError(f"unknown config key '{key}'; fix: remove it or check its spelling (conf/ and "
                           f"src/hald/schema.py list the keys)")
    return ConfigError(f"config key '{key}': {first}; fix: {key}=<a value of the right type>")


def check_against(schema: type, node: Any, where: str) -> None:
    """`node` (a config subtree) merged into `schema` and built: unknown keys, types, __post_init__ checks."""
    try:
        built = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        raise _error(e, where) from None
    check_ranges(built, where)


def validate(cfg: DictConfig) -> None:
    """Every key of a composed (or derived) config checked against the schema; raises ConfigError."""
    from hald.distill import method_of  # the method records own their keys

    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # flags off: a plain copy to check
    for key in OPEN:
        if key in root:
            root[key] = None
    if "paths" in root and "output_dir" in root.paths:
        root.paths.output_dir = None  # Hydra's own (${hydra:runtime.output_dir}): resolvable only inside a run
    try:
        built = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HaldConfig), root))
    except OmegaConfBaseException as e:
        raise _error(e) from None
    check_ranges(built, "")
    method = method_of(cfg.distill.method)
    if method.config is not None:
        distill = OmegaConf.to_container(cfg.distill, resolve=True)
        if method.uses_teacher and isinstance(distill.get("pool"), dict):  # a teacher config of its own
            check_against(TeacherConfig, distill["pool"], "distill.pool")
            distill["pool"] = None
        check_against(method.config, distill, "distill")
    check_codec(OmegaConf.to_container(cfg.labels.codec, resolve=True))
    check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))
    check_student(cfg)


def check_codec(codec: dict[str, Any]) -> None:
    """`labels.codec` names a registered codec and only its parameters (the dataclass fields of its class)."""
    from dataclasses import fields

    from hald.labels.codecs import CODECS

    name = codec.get("name")
    if name not in CODECS:
        raise ConfigError(f"labels.codec.name={name}; fix: one of {sorted(CODECS)} (codec=fp16|fp32|topk|quant|"
                          f"topk_quant, or a codec of a plugin)")
    known = {"name"} | {f.name for f in fields(CODECS[name])}
    unknown = sorted(set(codec) - known)
    if unknown:
        raise ConfigError(f"unknown config key 'labels.codec.{unknown[0]}' (codec {name} takes {sorted(known - {'name'})})"
                          f"; fix: remove it")


def check_trainer(trainer: dict[str, Any]) -> None:
    """`trainer.*` are Lightning Trainer(**kwargs): a key it does not take stops here, not after squeeze."""
    import lightning as L

    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer) - known)
    if unknown:
        raise ConfigError(f"unknown config key 'trainer.{unknown[0]}' (not an argument of Lightning's Trainer); fix: "
                          f"remove it or one of trainer.{{{', '.join(sorted(known)[:10])}, ...}}")


def check_student(cfg: DictConfig) -> None:
    """The phases are built (a bad `_target_` or argument fails here) and the partial module and DataModule
    have their arguments bound against their signatures."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    student = cfg.get("student")
    if student is None:
        raise ConfigError("the config has no `student` group; fix: keep `student: default` in the defaults list")
    try:
        instantiate(student.phases)
        for part in ("module", "datamodule"):
            made = instantiate(student[part])
            inspect.signature(made.func).bind_partial(*made.args, **made.keywords)
    except (InstantiationException, TypeError, ValueError) as e:
        cause = e.__cause__ or e
        raise ConfigError(f"student config: {' '.join(str(cause).split())[:300]}; fix: the arguments of the "
                          f"_target_ classes in conf/student (or your plugin)") from None
