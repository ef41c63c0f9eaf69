"""`hald <command> [args]`: one table of the project's commands ([project.scripts] in pyproject.toml).

    hald run [key=value ...]        the pipeline (= python src/run.py; -m for sweeps)
    hald report DIR [...]           tables and figures over run / multirun dirs (= python src/report.py)
    hald lvsd RUN_DIR               local-view semantic drift of a run's store
    hald consistency RUN_DIR        crop consistency of a run's student
    hald landscape RUN_DIR          the loss landscape around a run's student
    hald bench [...]                `make bench`      (hald_tools.bench)
    hald rehearse [...]             `make rehearse`   (hald_tools.rehearse)
"""
from __future__ import annotations

import importlib
import sys

# command -> (module, function, what it does); each function takes argv (Hydra's `run` reads sys.argv itself)
COMMANDS = {
    "run": ("hald.app", "main", "the pipeline: squeeze -> distill -> relabel -> train -> evaluate"),
    "report": ("hald.evaluate.report", "main", "tables and figures over run / multirun dirs"),
    "lvsd": ("hald.evaluate.lvsd", "main", "local-view semantic drift of a run's label store"),
    "consistency": ("hald.evaluate.consistency", "main", "crop consistency of a run's student"),
    "landscape": ("hald.evaluate.landscape", "main", "loss landscape around a run's student"),
    "bench": ("hald_tools.bench", "main", "the benchmarks (make bench)"),
    "rehearse": ("hald_tools.rehearse.__main__", "main", "every paper preset at its real shape (make rehearse)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items())
    return f"usage: hald <command> [args]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; fix: one of {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    if name == "run":  # a Hydra app: it parses sys.argv
        sys.argv = [f"hald {name}", *rest]
        return fn()
    return fn(rest)


if __name__ == "__main__":
    sys.exit(main())
