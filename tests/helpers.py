"""Helpers shared by the tests: config files, losses from metrics.jsonl, the sharded-vs-single-device check, and
child processes that take Ctrl-C as from a terminal."""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from vidjax import config_lib, tasks, train
from vidjax.metric_writer import read_metrics

# XLA flags of the commands tests run as child processes, in place of conftest.py's (which simulate 8 devices): the
# same loop emitters. The children compile with most optimisations off through the variable conftest.py sets, which
# they inherit (tiny jobs, where compiling is most of the time).
COMMAND_XLA_FLAGS = os.environ.get("VIDJAX_TEST_LOOP_EMITTERS", "")  # conftest.py's choice for this jaxlib


def tiered(values, default: int = 1, *, keep=None, unpack: bool = False) -> list:
    """`values` for `pytest.mark.parametrize` with the first `default` of them (or those in `keep`) in the default
    tier and the rest in the slow tier (marked `slow`: conftest.py), in their order, the test ids unchanged: the
    cases past the first check the same contract at more shapes, families or settings. `unpack`: each value is a
    tuple of several arguments."""
    cases = []
    for index, value in enumerate(values):
        if (index < default) if keep is None else (value in keep):
            cases.append(value)
        elif isinstance(value, type(pytest.param(None))):  # already a pytest.param: its own marks and id kept
            cases.append(pytest.param(*value.values, marks=[*value.marks, pytest.mark.slow], id=value.id))
        else:
            cases.append(pytest.param(*value, marks=pytest.mark.slow) if unpack
                         else pytest.param(value, marks=pytest.mark.slow))
    return cases


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a repository bash script a test runs (scripts/*.sh call `python`): this interpreter's
    directory first on PATH, so the script's `python` is the one running the tests even when the environment was not
    activated (pytest started as `.venv/bin/python -m pytest`), then `extra`."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


def popen_interruptible(*args, **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` for a child a test interrupts with SIGINT: the child starts with SIGINT's default action, as
    one started from a terminal does, even where the test runner was started with SIGINT ignored (a shell's
    background job, `pytest ... &`), which a child otherwise inherits and the commands then honour (`cli.guard`
    leaves an ignored signal ignored, as nohup wants). A signal with a handler is reset to its default at exec, so the
    runner's own SIGINT gets Python's handler for the moment of the start."""
    with contextlib.ExitStack() as restore:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            restore.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
        return subprocess.Popen(*args, **kwargs)


def load_config(name, arg=None):
    """`get_config(arg)` of configs/<name>.py."""
    return config_lib.load_config_file(str(pathlib.Path(__file__).parent.parent / "configs" / f"{name}.py"), arg)


def train_losses(workdir):
    return {row["step"]: row["loss"] for row in read_metrics(workdir) if row["split"] == "train"}


def run_then_resume(config, tmp_path, capsys, drop=("4", "6")):
    """A 6-step run in tmp_path/full (checkpoints every 2 steps), then a copy, tmp_path/cut, without the checkpoints
    of `drop`, resumed from step 2; asserts the resume and that steps 3-6 log the straight run's losses exactly.
    Returns (the straight run's result, the resumed run's, full, cut)."""
    import shutil

    devices = jax.devices()[:1]
    full, cut = tmp_path / "full", tmp_path / "cut"
    result = train.train_and_evaluate(config, str(full), devices=devices)
    shutil.copytree(full, cut)
    for step in drop:
        shutil.rmtree(cut / "checkpoints" / step)
    capsys.readouterr()
    resumed = train.train_and_evaluate(config, str(cut), devices=devices)
    assert resumed["resumed"] and "Resuming from checkpoint at step 2" in capsys.readouterr().out
    a, b = train_losses(full), train_losses(cut)
    assert sorted(b) == list(range(1, 7))
    for step in range(3, 7):
        assert a[step] == b[step], (step, a[step], b[step])
    return result, resumed, full, cut


def assert_sharded_matches_single_device(make_config, tmp_path, mesh=(2, 2, 2)):
    """Trains `make_config()` on 1 device and on all 8 with mesh (data, fsdp, tensor); losses agree to rtol 1e-5.

    Returns the 8-device final state, for checks of how its parameters are sharded.
    """
    train.train_and_evaluate(make_config(), str(tmp_path / "one"), devices=jax.devices()[:1])
    sharded = make_config()
    sharded.mesh.data, sharded.mesh.fsdp, sharded.mesh.tensor = mesh
    assert jax.device_count() == 8
    state = train.train_and_evaluate(sharded, str(tmp_path / "eight"))["state"]
    one, eight = train_losses(tmp_path / "one"), train_losses(tmp_path / "eight")
    assert sorted(one) == sorted(eight) and one, (one, eight)
    for step in one:
        np.testing.assert_allclose(eight[step], one[step], rtol=1e-5, err_msg=f"step {step}")
    return state


# Tiny model blocks, one per family, for the memory and strategy tests: width 32, 4 x 32 x 32 clips.
TINY_MODELS = {
    "videomae": dict(variant="Mu/8", width=32, depth=2, num_heads=2, decoder_width=32, decoder_heads=2,
                     decoder_depth=1),
    "timesformer": dict(variant="Mu/8", width=32, depth=2, num_heads=2, num_classes=8),
    "vivit": dict(variant="Mu/8x2", width=32, depth=2, num_heads=2, mlp_dim=128, num_classes=8,
                  head_init_scale=1.0),
    "videomamba": dict(variant="Mu/8", width=32, depth=2, scan_chunk=16, num_classes=8),
}


def tiny_family_config(model_name, **model_overrides):
    """A trainer config with a tiny `model_name` (VideoMAE pre-trains, the others classify), batch 8, 4 x 32 x 32."""
    from vidjax.models import get_model

    config = config_lib.trainer_config()
    config.model_name = model_name
    config.task = "pretrain" if model_name == "videomae" else "classification"
    config.model = get_model(model_name).default_config()
    config.model.update(dict(TINY_MODELS[model_name], num_frames=4, image_size=32, **model_overrides))
    config.data = config_lib.synthetic_data(num_frames=4, image_size=32, num_train=64, num_eval=16)
    config.batch_size = 8
    config.total_steps = 8
    config.optimizer.base_lr = 1e-3 * 256 / 8
    config.optimizer.warmup_epochs = 0.125
    return config


def abstract_model(config):
    """The model config.model describes, as shapes only (what `train.build` makes, without a mesh)."""
    from flax import nnx

    from vidjax.models import ParamKeys, get_model

    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: get_model(config.model_name).Model(config.model, rngs=ParamKeys(config.seed)))


def input_spec(config):
    """config.task's input spec (`TrainingSpec.input_spec`) over the model config.model describes: what the trainer
    hands `pipeline.make_dataset`, masks included."""
    return tasks.training_of(config.task).input_spec(config, abstract_model(config))


def run_steps(config, devices, steps=2):
    """`steps` updates of the trainer's jitted step on the first training batches, over a mesh of `devices`.

    Returns (losses, final state). Lighter than `train.train_and_evaluate` (no checkpoints, evals or metric files).
    """
    from vidjax import sharding
    from vidjax.data import pipeline

    mesh = sharding.create_mesh(config.mesh, devices)
    source = pipeline.make_source(config.data, "train")
    setup = train.build(config, len(source), mesh)
    spec = tasks.training_of(config.task).input_spec(config, setup.abstract_model)
    batches = iter(pipeline.make_dataset(config, "train", source, spec))
    step = train.make_train_step(config, setup)
    state, put, losses = setup.init_state(), train.batch_putter(config, mesh), []
    for _ in range(steps):
        state, metrics = step(state, put(next(batches)))
        losses.append(float(metrics["loss"]))
    return losses, state


COLABS = pathlib.Path(__file__).parent.parent / "colabs"


def run_notebook(name, tmp_path, cell_timeout=150):
    """Executes colabs/<name>.ipynb top to bottom in a fresh python3 kernel, as a fresh runtime would (cwd and
    TMPDIR a test folder, VIDJAX_QUICK=1, one CPU device unless the notebook asks for more); fails on the first
    cell that raises, showing that cell's source and error. The stored notebook must be saved with no outputs."""
    import os
    import re

    import nbclient
    import nbformat

    path = COLABS / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    stored = [cell for cell in notebook.cells if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not stored, f"{path} is saved with outputs: clear them (e.g. jupyter nbconvert --clear-output --inplace)"
    assert notebook.cells[0].cell_type == "markdown"
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "PYTEST_CURRENT_TEST")}
    env.update(VIDJAX_QUICK="1", XLA_FLAGS=COMMAND_XLA_FLAGS, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=cell_timeout,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as err:
        raise AssertionError(f"{path.name} failed:\n" + re.sub(r"\x1b\[[0-9;]*m", "", str(err))) from None
    return notebook


class ContainerProxy:
    """A PyAV input container passed through, for tests that change one of its methods (seek, demux) in a subclass
    and hand it to the decoder in place of `vidjax.data.decode._open`'s."""

    def __init__(self, container):
        self.container = container

    def __getattr__(self, name):
        return getattr(self.container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()


def seeded_checkpoint(case: dict, out) -> pathlib.Path:
    """A converted checkpoint (`vidjax.pretrained.load` reads it) of the model a to_hf fixture's case.json describes:
    case["model_name"] built from its default config updated with case["model"] (nested blocks merged), every
    weight drawn from `np.random.RandomState(case["seed"])` in parameter-name order (norm scales 1 + 0.2 N(0, 1),
    the rest 0.2 N(0, 1), so no mapping mistake hides behind zeros or ones). RandomState's stream is frozen, so the
    same case gives the same bytes on every machine and numpy version: what scripts/parity/to_hf.py exported and
    recorded transformers' outputs of. case["captions"] builds a word-level tokenizer, saved beside the weights;
    case["class_names"] names the head's outputs; case["preprocessing"] (mean, std, short_side) the input."""
    import tempfile

    import ml_collections

    from vidjax.convert import common
    from vidjax.models import clip_spec, get_model
    from vidjax.tokenizer import CaptionTokenizer

    def merge(block: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                merge(block[key], value)
            else:
                block[key] = tuple(value) if isinstance(value, list) else value

    name = case["model_name"]
    module = get_model(name)
    cfg = module.default_config(case["model"]["encoder_name"]) if name == "captioner" else module.default_config()
    merge(cfg, case["model"])
    flat = common.flatten_params(common.abstract_params(name, common.per_block_config(cfg)))
    rng = np.random.RandomState(case["seed"])
    params = {}
    for key in sorted(flat):
        noise = (0.2 * rng.standard_normal(flat[key].shape)).astype(np.float32)
        params[key] = noise + np.float32(1.0) if key.endswith("/scale") else noise
    spec = clip_spec(name, cfg)
    preprocessing = {}
    if spec is not None:
        preprocessing = dict(mean=list(spec["mean"]), std=list(spec["std"]), num_frames=spec["num_frames"],
                             image_size=spec["image_size"], short_side=spec["image_size"])
        preprocessing.update(case.get("preprocessing", {}))
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "captions" in case:
            CaptionTokenizer.build_word_level(case["captions"]).save(tmp)
            files = {f"tokenizer/{f}": os.path.join(tmp, f) for f in os.listdir(tmp)}
        converted = common.Converted(name, cfg, params, preprocessing, case.get("class_names"), files=files)
        return common.write_converted(converted, out)
