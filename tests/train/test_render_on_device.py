"""train.images_on_device: pixels made after the batch transfer are the loader's pixels, and train the same.

On a CPU the device path runs the same code as on an accelerator (records and crop boxes from the loader,
`render` in on_after_batch_transfer), so these tests pin it down without a GPU."""
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from hald import artifacts
from hald.data.distilled import load_distilled, write_imagefolder
from hald.labels.budget import plan_store
from hald.labels.relabel import relabel
from hald.labels.store import open_store_for
from hald.models import build_backbone
from hald.models.teachers import Committee
from hald.train.callbacks import PhaseScheduler
from hald.train.datamodule import HALDDataModule
from hald.train.module import StudentModule
from hald.train.phases import standard_phases
from hald.train.resume import StepSeed
from hald.train.schedule import HARD, SOFT, Schedule

DS = {"name": "toy", "input_size": 16, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "channels": 3}
SCHEDULE = Schedule(((SOFT, 1), (HARD, 1), (SOFT, 1)))
CPU = torch.device("cpu")


@pytest.fixture
def data(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(12, 3, 20, 20, generator=g) * 255).to(torch.uint8)  # 20 px sources -> 16 px crops
    write_imagefolder(tmp_path / "images", imgs, torch.arange(3).repeat_interleave(4))
    distilled = load_distilled(tmp_path / "images", ["a", "b", "c"], 3)
    cfg = OmegaConf.create(dict(slc=8, batch_size=5, temperature=20.0, teacher_mode="eval", codec={"name": "float"},
                                crop_scale=[0.08, 1.0], crop_ratio=[0.75, 4 / 3], flip_p=0.5, cutmix_alpha=1.0,
                                seed=7, num_workers=0, groups_per_forward=1))
    torch.manual_seed(0)
    committee = Committee([build_backbone("convnet_w32", 3, 3, 16).eval()])
    plan = plan_store(cfg.codec, len(distilled), distilled.ipc, 3, cfg.batch_size, cfg.slc, None, lambda *_: 0)
    out = tmp_path / "store"
    out.mkdir()
    fields = relabel(distilled, committee, plan, cfg, DS, out, {"accelerator": "cpu", "devices": 1,
                                                                "enable_progress_bar": False})
    artifacts.finish(out, "relabel", "k", cfg, {}, **fields)
    return distilled, open_store_for(out, distilled)


def datamodule(data, on_device, **kw):
    distilled, store = data
    return HALDDataModule(distilled, store, DS, SCHEDULE, standard_phases(5, 4),
                          TensorDataset(distilled.images, distilled.targets), seed=3, images_on_device=on_device, **kw)


def test_device_path_gives_the_loaders_pixels(data):
    host, dev = datamodule(data, False), datamodule(data, True)
    for epoch in range(3):
        a, b = list(host.train_dataloader(epoch)), list(dev.train_dataloader(epoch))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert isinstance(y, dict) and "geometry" in y and "x" not in y  # records only: no pixels yet
            y = dev.on_after_batch_transfer(dev.transfer_batch_to_device(y, CPU, 0), 0)
            if SCHEDULE.phase_at(epoch) == SOFT:
                assert set(x) == set(y)
                for k in ("x", "target", "index", "records"):
                    assert torch.equal(x[k], y[k]), k
            else:
                assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[0].shape == (4, 3, 16, 16)


def test_auto_renders_on_accelerators_when_the_images_fit(data):
    dm = datamodule(data, "auto")
    assert not dm.render_on_device  # no trainer, or a CPU one
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm.render_on_device
    dm.images_on_device_max_gb = dm.images.nbytes / 2e9  # the images do not fit: the loader renders
    assert not dm.render_on_device
    with pytest.raises(ValueError, match="images_on_device"):
        datamodule(data, "yes")


def fit(data, on_device):
    torch.manual_seed(0)
    dm = datamodule(data, on_device)
    module = StudentModule(build_backbone("convnet_w32", 3, 3, 16), 3, SCHEDULE, dm.phases, lr=1e-3)
    rendered = []
    upload = dm.device_images
    dm.device_images = lambda device: rendered.append(device) or upload(device)
    trainer = L.Trainer(max_epochs=SCHEDULE.total_epochs, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
                        callbacks=[PhaseScheduler(SCHEDULE), StepSeed(3)], logger=False, enable_checkpointing=False,
                        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    return module, metrics, test, len(rendered)


def test_device_path_trains_exactly_as_the_host_path(data):
    host, host_metrics, host_test, host_renders = fit(data, False)
    dev, dev_metrics, dev_test, dev_renders = fit(data, True)
    assert host_renders == 0 and dev_renders > 0  # the device run really rendered after the transfer
    assert host.epoch_paths == dev.epoch_paths == {0: {SOFT}, 1: {HARD}, 2: {SOFT}}
    assert {"train/loss_soft", "train/loss_hard", "val/top1"} <= set(host_metrics)
    assert host_metrics == dev_metrics and host_test == dev_test
    for (name, a), b in zip(host.state_dict().items(), dev.state_dict().values()):
        assert torch.equal(a, b), name
