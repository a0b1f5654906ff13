"""Video models, looked up by name: `get_model("videomae")` imports `vidjax.models.videomae`.

Every model module exposes the same contract: a `Model(cfg, rngs=...)` NNX module built from `config.model`,
and `default_config()` giving that model's config block.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_NOT_MODELS = {"layers", "decoding"}


def available() -> list[str]:
    """Names of the model modules shipped with vidjax."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_MODELS)


def get_model(name: str) -> ModuleType:
    """The model module called `name`, with an error listing the known ones for a typo."""
    if name not in available():
        raise ValueError(f"Unknown model_name {name!r}; available models: {', '.join(available())}.")
    return importlib.import_module(f"vidjax.models.{name}")
