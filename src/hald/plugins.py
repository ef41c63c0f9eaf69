"""`plugins=[module, ...]`: a user's own modules, imported before anything is checked, so their methods
(@register), codecs (@register_codec), datasets (@register_source), phases and losses exist for the run."""
from __future__ import annotations

import importlib
from typing import Iterable

from hald.errors import ConfigError


def load_plugins(modules: Iterable[str]) -> None:
    for name in modules or ():
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise ConfigError(f"plugin '{name}' could not be imported ({e}); fix: put its package on PYTHONPATH "
                              f"(or pip install it), or remove it from plugins") from None
