"""Tooling beside the library: `make bench` (bench.py) and `make rehearse` (rehearse/). They import only hald's
public planners and stages (the same ones a run calls), never the other way round."""
