"""docs/fidelity.md cannot drift from the presets: every keyed row of its tables is the composed preset's value.

A table names its presets in the header (the columns after "official"); a row's `key` cell is a config key
(`train.epochs`) or a derived value (`@sli`, `@label_bytes`, ...: `derived` below); each preset cell holds
the value as a YAML literal in backticks. A row whose key cell is "-" is prose only.

The "official (source)" column is checked too where a reviewed record exists: tests/pipeline/official_values.py
(repo, commit, path:line and the literal text there) against the doc, without the network."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, compose

DOC = ROOT / "docs" / "fidelity.md"
PAPER_PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")
                       if p.stem.startswith(("hald_", "cvdd_", "fadrm_", "cim_", "lpqld_")) or p.stem == "paper_exact")
CELL = re.compile(r"`([^`]*)`")


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table whose header has a `key` column: (header cells, rows of cells)."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])  # `\|` is a pipe inside a cell (GFM)
            block.append([c.strip().replace("\\|", "|") for c in cells])
            continue
        if len(block) > 2 and "key" in block[0]:
            out.append((block[0], block[2:]))
        block = []
    return out


def preset_columns(header: list[str]) -> dict[str, int]:
    """Columns that are a preset (`hald_tiny_slc50`) or a config group option (`teacher=sre2l_tiny_resnet18`)."""
    cols = {}
    for i, h in enumerate(header):
        name = h.strip("`")
        group, _, option = name.partition("=")
        if name in PAPER_PRESETS or (option and (ROOT / "conf" / group / f"{option}.yaml").is_file()):
            cols[name] = i
    return cols


def overrides_of(column: str) -> list[str]:
    return [column] if "=" in column else [f"experiment={column}"]


def wnids(n: int) -> list[str]:
    return [f"n{i:08d}" for i in range(n)]  # WNID-length names: the manifest reserve depends on their size


def derived(cfg, key: str):
    """Values the config implies rather than states."""
    from hald.distill.rded import resolve_factor
    from hald.evaluate.summary import best_every  # noqa: F401  (the metric these epochs feed)
    from hald.pipeline.stages import plan_relabel
    from hald.pipeline.student import resolve_lr
    from hald.train.callbacks import PhaseScheduler
    from hald.train.schedule import make_schedule

    ipc, nc = int(cfg.ipc), int(cfg.dataset.num_classes)
    sched = make_schedule(cfg.schedule.preset, int(cfg.train.epochs), float(cfg.schedule.soft_fraction))
    if key == "@sli":
        return int(cfg.slc) // ipc
    if key == "@label_bytes":  # the shards of the store, exact (labels/store.py shard_bytes)
        plan = plan_relabel(cfg, ipc * nc, ipc, wnids(nc))
        return plan.sli * plan.shard_bytes
    if key == "@soft_label_bytes":  # the fp16 soft-label payload alone: SLC x C x C x 2 B
        return int(cfg.slc) * nc * nc * 2
    if key == "@lr_eta":
        return list(resolve_lr(cfg, ipc))
    if key == "@timeline":
        return sched.timeline()
    if key == "@factor":
        d = cfg.distill
        factor = d.get("factor") if d.method == "rded" else (d.get("rded") or {}).get("factor", "auto")
        return resolve_factor(factor, int(cfg.dataset.input_size))
    if key == "@pairs":
        return len(list(itertools.combinations(cfg.distill.pool.models, int(cfg.distill.committee.size))))
    if key == "@eval_epochs":
        cb = PhaseScheduler(sched, cfg.optimizer.on_phase_switch, int(cfg.train.eval_every), False)
        e = [x for x in range(sched.total_epochs) if cb.eval_epoch(x)]
        return ", ".join(map(str, e[:3])) + ", ..., " + ", ".join(map(str, e[-2:])) if len(e) > 5 else \
            ", ".join(map(str, e))
    raise KeyError(f"unknown derived key {key}")


def value(cfg, key: str):
    if key.startswith("@"):
        return derived(cfg, key)
    found = OmegaConf.select(cfg, key, default="<missing>")
    return OmegaConf.to_container(found, resolve=True) if OmegaConf.is_config(found) else found


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def rows_of(preset: str):
    text = DOC.read_text()
    for header, rows in tables(text):
        cols = preset_columns(header)
        if preset not in cols:
            continue
        k = header.index("key")
        for row in rows:
            key = CELL.findall(row[k])
            if not key:
                continue
            cell = CELL.findall(row[cols[preset]])
            assert cell, f"docs/fidelity.md: row '{row[0]}' ({key[0]}) has no `value` for {preset}"
            yield row[0], key[0], yaml.safe_load(cell[0])


def columns() -> list[str]:
    return sorted({c for header, _ in tables(DOC.read_text()) for c in preset_columns(header)})


@pytest.mark.parametrize("preset", columns())
def test_every_preset_value_is_the_tables(preset, tmp_path):
    cfg = compose(overrides_of(preset) + ["trainer=gpu"], tmp_path)  # fp32 also under trainer=gpu
    checked = 0
    wrong = []
    for setting, key, want in rows_of(preset):
        got = value(cfg, key)
        checked += 1
        if not same(got, want):
            wrong.append(f"{setting} ({key}): table {want!r}, preset {got!r}")
    assert checked >= (5 if "=" in preset else 10), f"{preset}: only {checked} rows in docs/fidelity.md"
    assert not wrong, f"{preset} differs from docs/fidelity.md:\n  " + "\n  ".join(wrong)


def test_every_paper_preset_has_a_table():
    covered = set(columns()) & set(PAPER_PRESETS)
    assert covered == set(PAPER_PRESETS), f"presets without a column in docs/fidelity.md: {set(PAPER_PRESETS) - covered}"


def test_every_row_cites_a_source_or_says_why_not():
    for header, rows in tables(DOC.read_text()):
        if "official (source)" not in header:
            continue
        i = header.index("official (source)")
        for row in rows:
            assert row[i] and row[i] != "-", f"row '{row[0]}' has no official value"


def _plain(cfg, key: str):
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


def test_hald_on_fadrm_images_makes_fadrm_plus_in1k_images(tmp_path):
    """hald_in1k_fadrm builds its images with fadrm_plus_in1k's distill (so both runs share one image artifact:
    the key is the resolved distill config and the pool's teacher keys, pipeline/stages.py stage_distill)."""
    fadrm = compose(["experiment=fadrm_plus_in1k"], tmp_path)
    hald = compose(["experiment=hald_in1k_fadrm"], tmp_path)
    assert hald.distill.method == "fadrm_plus" and hald.ipc == fadrm.ipc == 10
    assert _plain(hald, "distill") == _plain(fadrm, "distill")


@pytest.mark.parametrize("preset, extra", [("hald_in1k_fadrm", []),
                                           ("hald_in1k_fadrm_folder", ["distill.path=/published/set"])])
def test_hald_fadrm_presets_are_hald_in1k_outside_the_images(preset, extra, tmp_path):
    """The two HALD-on-FADRM presets are hald_in1k_slc50 in everything but the images, SLC 100 and the
    recovered-set teacher mode (BSSL)."""
    base = OmegaConf.to_container(compose(["experiment=hald_in1k_slc50"], tmp_path), resolve=True)
    cfg = OmegaConf.to_container(compose([f"experiment={preset}", *extra], tmp_path), resolve=True)
    assert (cfg["slc"], cfg["labels"]["teacher_mode"], cfg["labels"]["bssl_group_size"]) == (100, "bssl", None)
    for c in (base, cfg):
        for k in ("distill", "slc"):
            c.pop(k)
        for k in ("teacher_mode", "slc"):  # labels.slc = ${slc}
            c["labels"].pop(k)
    assert cfg == base


@pytest.mark.parametrize("option, n", [("cvdd_v1_in1k", 5), ("cvdd_v1_tiny", 5), ("cvdd_head_in1k", 5)])
def test_cvdd_published_priors_fit_their_pools(option, n, tmp_path):
    preset = "cvdd_tiny" if option.endswith("tiny") else "cvdd_in1k"
    cfg = compose([f"experiment={preset}", f"distill/priors={option}"], tmp_path)
    assert len(cfg.distill.priors) == len(cfg.distill.pool.models) == n
    assert compose([f"experiment={preset}"], tmp_path).distill.priors is None  # measured by default


def test_the_285mb_store_bytes(capsys, tmp_path):
    """The planner's exact bytes for HALD's headline figure (printed: `pytest -s` shows them)."""
    cfg = compose(["experiment=hald_in1k_285mb"], tmp_path)
    shards = derived(cfg, "@label_bytes")
    budget = compose(["experiment=hald_in1k_285mb", "label_budget=400MB"], tmp_path)
    from hald.pipeline.stages import plan_relabel

    plan = plan_relabel(budget, 50 * 1000, 50, wnids(1000))
    with capsys.disabled():
        print(f"\nhald_in1k_285mb: IPC {cfg.ipc}, SLC {cfg.slc} (SLI {plan.sli}): shards {shards:,} B "
              f"({plan.sli} x {plan.shard_bytes:,}), manifest <= {plan.manifest_reserve:,} B, "
              f"fp16 soft labels alone {derived(cfg, '@soft_label_bytes'):,} B")
    assert (cfg.ipc, cfg.slc, plan.sli) == (50, 150, 3)
    assert shards == 3 * plan.shard_bytes == 301_783_062 and derived(cfg, "@soft_label_bytes") == 300_000_000


@pytest.mark.slow
@pytest.mark.parametrize("preset, mode", [("hald_in1k_sre2l", "bssl"), ("hald_in1k_rded", "eval")])
def test_published_set_presets_train_one_step(preset, mode, tmp_path):
    """HALD on a published set: the folder is relabelled in HALD's teacher mode for it (BSSL for a recovered
    set) and trained; only the data (a 3-class stand-in), the teacher and the step count are replaced."""
    import numpy as np
    from PIL import Image

    from hald import pipeline

    g = np.random.default_rng(0)
    root, syn = tmp_path / "imagenet", tmp_path / "published"
    for c, w in enumerate(["n01443537", "n01629819", "n01641577"]):
        for split, k in (("train", 4), ("val", 2)):
            (root / split / w).mkdir(parents=True)
            for i in range(k):
                Image.fromarray((g.random((64, 64, 3)) * 80 + 60 * c).astype("uint8")).save(root / split / w / f"{i}.JPEG")
        (syn / f"{c:05d}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray((g.random((224, 224, 3)) * 255).astype("uint8")).save(syn / f"{c:05d}" / f"{i}.png")
    cfg = compose([f"experiment={preset}", f"dataset.root={root}", "dataset.num_classes=3", f"distill.path={syn}",
                   "slc=4", "teacher.models=[convnet_w32]", "teacher.pretrained=null", "teacher.squeeze.epochs=1",
                   "teacher.squeeze.batch_size=12", "teacher.squeeze.num_workers=0", "labels.num_workers=0",
                   "train.num_workers=0", "train.eval_batch_size=8", "train.crop_consistency=false", "logger=none",
                   "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "train.epochs=2"], tmp_path)
    assert cfg.labels.teacher_mode == mode
    out = pipeline.run(cfg)
    assert out["ipc"] == 2 and out["sli"] == 2 and 0 <= out["top1"] <= 100


def _official_cell(table: str, setting: str) -> str:
    """The "official (source)" cell of `setting` in the table that has a column `table`."""
    found = [row[header.index("official (source)")] for header, rows in tables(DOC.read_text())
             if table in preset_columns(header) and "official (source)" in header
             for row in rows if row[0] == setting]
    assert len(found) == 1, f"docs/fidelity.md: {len(found)} rows '{setting}' in the table of {table}"
    return found[0]


def _covers(cite: str, line: int) -> bool:
    """`cite` = 'path:12' / 'path:12-14' / 'path:3, 12-14 ...': does one of its numbers or ranges hold `line`?"""
    spans = re.findall(r"(\d+)(?:-(\d+))?", cite.partition(":")[2])
    return any(int(a) <= line <= int(b or a) for a, b in spans)


def _states(cell: str, value: str) -> bool:
    """Does the cell state `value` as a whole token outside its parenthesised sources ('16 (train.sh:16)' states
    16; '32 (train.sh:16)' does not)?"""
    while True:
        bare = re.sub(r"\([^()]*\)", " ", cell)
        if bare == cell:
            break
        cell = bare
    return re.search(r"(?<![\w.])" + re.escape(value) + r"(?![\w.])", cell) is not None


def test_the_official_column_is_the_reviewed_record():
    """The "official" column against tests/pipeline/official_values.py: each recorded value of the official code
    (repo, commit, path:line and the literal text there, checked by hand against the commit) is in its row's
    official cell with a citation of that line, and the commit is one the page names as read. No network."""
    from official_values import RECORDS

    text = DOC.read_text()
    header = text.split("## Deviations", 1)[0]
    wrong = []
    for r in RECORDS:
        assert r.commit in header, f"{r.repo} @ {r.commit} is not among the commits docs/fidelity.md names"
        cite_path = r.cite.partition(":")[0]
        assert r.path.endswith(cite_path) and _covers(r.cite, r.line), f"record {r}: its cite misses its line"
        cell = _official_cell(r.table, r.setting)
        if not _states(cell, r.value):
            wrong.append(f"{r.table} / {r.setting}: official cell lacks {r.value!r} ({r.repo} {r.path}:{r.line} "
                         f"'{r.text}')")
        if r.cite not in cell:
            wrong.append(f"{r.table} / {r.setting}: official cell lacks the citation {r.cite!r} of {r.path}:{r.line}")
    assert len(RECORDS) >= 40
    assert not wrong, "docs/fidelity.md differs from the reviewed official values:\n  " + "\n  ".join(wrong)
