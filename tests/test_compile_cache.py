"""The commands' persistent compilation cache (vidjax/compile_cache.py): where it lives, how it is turned off, an
unwritable folder, and a second run of a training command loading its train step from the first run's cache; the
trainer's train step compiled on a thread while the state is initialised (train.AheadOfTimeStep)."""

import os
import pathlib
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import COMMAND_XLA_FLAGS

from vidjax import cli, compile_cache, train

ROOT = pathlib.Path(__file__).parent.parent


def test_cache_dir_from_env_default_and_off(tmp_path):
    assert compile_cache.resolve_dir({"VIDJAX_CACHE_DIR": str(tmp_path / "c")}) == str(tmp_path / "c")
    assert compile_cache.resolve_dir({"VIDJAX_CACHE_DIR": "~/c", "HOME": "/h"}) == os.path.expanduser("~/c")
    assert compile_cache.resolve_dir({"XDG_CACHE_HOME": "/xdg"}) == "/xdg/vidjax/jax"
    assert compile_cache.resolve_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "vidjax", "jax")
    assert compile_cache.resolve_dir({"VIDJAX_CACHE_DIR": "gs://b/jax"}) == "gs://b/jax"  # jax's to read and write
    for off in ("", "off", "OFF", " off "):
        assert compile_cache.resolve_dir({"VIDJAX_CACHE_DIR": off}) is None, off


@pytest.fixture
def jax_options(monkeypatch):
    """The jax options `configure` sets, recorded instead of set (this process keeps the tests' own cache), as if
    no cache were configured for jax yet."""
    options = {}
    monkeypatch.setattr(compile_cache, "_jax_config_dir", lambda: None)
    monkeypatch.setattr(compile_cache, "_set", options.__setitem__)
    monkeypatch.setattr(compile_cache, "_warned", set())
    return options


def test_configure_on_and_off(tmp_path, monkeypatch, jax_options):
    monkeypatch.setenv("VIDJAX_CACHE_DIR", str(tmp_path / "cache"))
    assert compile_cache.configure() == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert jax_options["jax_compilation_cache_dir"] == str(tmp_path / "cache")
    assert jax_options["jax_persistent_cache_min_compile_time_secs"] == compile_cache.MIN_COMPILE_TIME_SECS
    assert os.listdir(tmp_path / "cache") == []  # the write check leaves nothing behind
    jax_options.clear()
    assert compile_cache.configure(enabled=False) is None
    assert jax_options == {"jax_enable_compilation_cache": False}
    jax_options.clear()
    monkeypatch.setenv("VIDJAX_CACHE_DIR", "off")
    assert compile_cache.configure() is None and jax_options == {}


def test_cache_already_configured_for_jax_is_kept(tmp_path, monkeypatch):
    import jax

    monkeypatch.setenv("VIDJAX_CACHE_DIR", str(tmp_path / "other"))
    assert compile_cache.configure() == jax.config.jax_compilation_cache_dir  # conftest's, left as it is
    assert not (tmp_path / "other").exists()


def test_argparse_commands_spell_the_flag_like_absl(monkeypatch):
    calls = []
    monkeypatch.setattr(compile_cache, "configure", calls.append)
    parser = cli.ArgumentParser("python -m vidjax.x")
    for argv, enabled in [([], True), (["--compilation_cache"], True), (["--compilation_cache=false"], False),
                          (["--nocompilation_cache"], False), (["--compilation-cache=0"], False)]:
        assert parser.parse_args(argv).compilation_cache is enabled, argv
        assert calls.pop() is enabled


def test_unwritable_cache_dir_is_one_warning(tmp_path, capsys, jax_options, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("VIDJAX_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert compile_cache.configure() is None and compile_cache.configure() is None
    assert jax_options == {}
    err = capsys.readouterr().err
    assert err.count("warning: compilation cache off for this run: cannot write to") == 1, err
    assert "VIDJAX_CACHE_DIR" in err


def _command(*args, cache, workdir=None):
    env = dict(os.environ, VIDJAX_CACHE_DIR=cache, XLA_FLAGS=COMMAND_XLA_FLAGS, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)  # the commands' own setting: an unbounded folder
    return subprocess.run([sys.executable, "-m", "vidjax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_unwritable_cache_dir_does_not_stop_a_command(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = _command("--config=configs/videomae_k400.py:runlocal", "--print_config",
                    cache=str(tmp_path / "file" / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning: compilation cache off for this run") == 1, proc.stderr
    assert "model_name: videomae" in proc.stdout


def test_second_run_loads_the_train_step_from_the_cache(tmp_path):
    (tmp_path / "tiny.py").write_text(
        f"import sys\nsys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
        "from helpers import tiny_family_config\n\n\n"
        "def get_config():\n"
        "    config = tiny_family_config('timesformer')\n"
        "    config.total_steps, config.data.num_eval = 1, 8\n"
        "    return config\n")
    cache = tmp_path / "cache"
    lines = []
    for run in ("one", "two"):
        proc = _command(f"--config={tmp_path / 'tiny.py'}", f"--workdir={tmp_path / run}", cache=str(cache))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines.append(next(line for line in proc.stdout.splitlines() if line.startswith("First step")))
        assert any(name.startswith("jit_") for name in os.listdir(cache)), os.listdir(cache)
    assert f"(compile cache miss, {cache})" in lines[0], lines
    assert f"(compile cache hit, {cache})" in lines[1], lines
    assert " after start " in lines[1]


def test_cache_lookups_are_counted_on_the_thread_that_compiles():
    compile_cache.watch()
    main_before, seen = compile_cache.counts(), {}

    def compile_elsewhere():
        before = compile_cache.counts()
        jax.jit(lambda x: x * 3 + 1).lower(jax.ShapeDtypeStruct((5, 7), jnp.float32)).compile()
        after = compile_cache.counts()
        seen["lookups"] = after["hits"] + after["misses"] - before["hits"] - before["misses"]

    thread = threading.Thread(target=compile_elsewhere)
    thread.start()
    thread.join()
    assert seen["lookups"] == 1
    assert compile_cache.counts() == main_before


def _config():
    return ml_collections.ConfigDict({"memory_limit_gb": 0.0})


def test_ahead_of_time_step_compiles_on_a_thread_and_runs_like_the_jitted_step(capsys):
    step_fn = jax.jit(lambda state, batch: (state + batch["x"].sum(), {"loss": jnp.sum(state)}))
    state, batch = jnp.arange(3.0), {"x": jnp.arange(4.0)}
    step = train.AheadOfTimeStep(_config(), step_fn, jax.ShapeDtypeStruct((3,), jnp.float32), batch)
    step.wait_lowered()
    got, expected = step(state, batch), step_fn(state, batch)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1]["loss"], expected[1]["loss"])
    assert not step._thread.is_alive() and step._thread.daemon
    assert step.cache.startswith("compile cache ")
    assert "Memory per device (train step)" in capsys.readouterr().out  # reported once, before the first run
    step(state, batch)
    assert "Memory per device" not in capsys.readouterr().out


def test_ahead_of_time_step_raises_what_its_compilation_raised_on_the_first_call():
    def bad(state, batch):
        return state @ batch["x"], {}  # (3,) @ (4,): a shape error while tracing, on the thread

    step = train.AheadOfTimeStep(_config(), jax.jit(bad), jax.ShapeDtypeStruct((3,), jnp.float32),
                                 {"x": jnp.ones(4)})
    step.wait_lowered()  # set even though the lowering failed: a caller waiting on it is not stuck
    step.abandon()  # what a caller leaving by its own error does: no raise
    with pytest.raises(TypeError, match="dot_general requires contracting dimensions to have the same shape"):
        step(jnp.ones(3), {"x": jnp.ones(4)})
