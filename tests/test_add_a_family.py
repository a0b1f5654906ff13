"""The add-a-family recipe of docs/architecture.md works as written: its example model module, put among the models as
a new file (no line of any other file changed), is found by the registry, declares its traits, and trains through
the one trainer on the embedded dataset, with the layer-wise lr decay its traits make possible."""

from __future__ import annotations

import pathlib
import re
import sys

import jax
import numpy as np
import pytest
from helpers import TINY_MODELS, tiny_family_config, train_losses

import vidjax.models
from vidjax import models, train
from vidjax.train import optim

ROOT = pathlib.Path(__file__).resolve().parent.parent


def documented_model_module() -> tuple[str, str]:
    """(module name, source) of the example module in docs/architecture.md's "### A model" recipe."""
    recipe = re.search(r"^### A model\n(.*?)^### ", (ROOT / "docs" / "architecture.md").read_text(),
                       re.DOTALL | re.MULTILINE).group(1)
    blocks = re.findall(r"```python\n(.*?)```", recipe, re.DOTALL)
    assert len(blocks) == 1, "the model recipe holds one ```python block: the new family's module"
    return re.search(r"as `vidjax/models/(\w+)\.py`", recipe).group(1), blocks[0]


@pytest.fixture
def documented_family(tmp_path, monkeypatch):
    """The documented module saved as vidjax/models/NAME.py would be, in a folder on `vidjax.models.__path__`."""
    name, source = documented_model_module()
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    monkeypatch.setattr(vidjax.models, "__path__", [*vidjax.models.__path__, str(folder)])
    yield name
    sys.modules.pop(f"vidjax.models.{name}", None)


def test_the_documented_family_trains_as_written(documented_family, tmp_path, monkeypatch):
    name = documented_family
    assert name in models.available() and name in optim.layer_decay_models()
    assert models.tokens_part(name, models.get_model(name).default_config()) == ""  # the default trait
    monkeypatch.setitem(TINY_MODELS, name, dict(variant="Mu/8", width=32, depth=2, num_heads=2))
    config = tiny_family_config(name)
    config.model.num_classes = config.data.num_classes
    config.optimizer.layer_decay = 0.75  # numbered by the module's own layer layout
    config.update(total_steps=4, log_every=1, checkpoint_every=4, figure=False)
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
    losses = train_losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4] and np.isfinite(list(losses.values())).all()
    assert np.isfinite(result["eval_loss"])
