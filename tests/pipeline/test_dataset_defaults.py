"""`python src/run.py dataset=tiny_imagenet slc=50` runs the project defaults for the dataset (HALD-like, not a paper preset) (compose only):
each dataset names its default student and teacher; the command line and experiments still choose."""
import pytest

from conftest import compose
from hald.pipeline.student import resolve_lr


@pytest.mark.parametrize("dataset, model, teacher", [
    ("mnist5k", "convnet_w32", ["convnet_w64"]),             # the bundled digits keep their small models
    ("tiny_imagenet", "resnet18_cifar", ["resnet18_cifar"]),
    ("cifar10", "resnet18_cifar", ["resnet18_cifar"]),
    ("cifar100", "resnet18_cifar", ["resnet18_cifar"]),
    ("imagenet1k", "resnet18_tv", ["resnet18"]),
    ("imagenette", "resnet18_tv", ["resnet18_tv"]),
])
def test_each_dataset_names_its_student_and_teacher(dataset, model, teacher, tmp_path):
    cfg = compose([f"dataset={dataset}"], tmp_path)
    assert cfg.model.name == model and list(cfg.teacher.models) == teacher


def test_the_readme_tiny_imagenet_command_runs_the_project_defaults(tmp_path):
    """The README's Tiny-ImageNet command composes the project's defaults (HALD's resolution, student, IPC, T,
    S6 schedule and lr table), not HALD's exact training (that is `experiment=hald_tiny_slc50` / `paper_exact`;
    HALD's released code does not run on Tiny-ImageNet at all: docs/fidelity.md)."""
    cfg = compose(["dataset=tiny_imagenet", "dataset.root=/data/tiny-imagenet-200", "slc=50"], tmp_path)
    assert (cfg.dataset.input_size, cfg.model.name, cfg.ipc, cfg.slc) == (64, "resnet18_cifar", 10, 50)
    assert cfg.teacher.squeeze.optimizer == "sgd" and cfg.teacher.squeeze.lr == 0.01  # CV-DD's Tiny recipe
    assert resolve_lr(cfg, 10) == (1e-3, 2.0)  # HALD's lr / eta table at IPC 10
    assert cfg.labels.temperature == 20 and cfg.schedule.preset == "S6" and cfg.train.epochs == 300


def test_the_command_line_and_experiments_still_choose(tmp_path):
    cfg = compose(["dataset=tiny_imagenet", "model=resnet18_small", "teacher=sre2l_tiny_resnet18"], tmp_path)
    assert cfg.model.name == "resnet18_small" and list(cfg.teacher.models) == ["resnet18_modified"]
    cfg = compose(["model=convnet_w32", "dataset=tiny_imagenet"], tmp_path)  # order on the command line: any
    assert cfg.model.name == "convnet_w32"
    cfg = compose(["experiment=cvdd_in1k"], tmp_path)  # the experiment's choice wins over the dataset's
    assert cfg.model.name == "resnet18_tv" and list(cfg.teacher.models) == ["resnet18"]
