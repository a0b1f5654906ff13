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
    # The train step itself, loaded without tracing (compile_cache.compile_or_load): one entry, used by run two.
    assert [name.split("-")[0] for name in os.listdir(cache / compile_cache.STEPS_SUBDIR)] == ["train_step"]
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


@pytest.fixture
def steps_dir(tmp_path, monkeypatch):
    """`compile_or_load`'s entries in a folder of the test's own (as under a command that configured the cache)."""
    directory = tmp_path / "steps"
    monkeypatch.setattr(compile_cache, "_steps_dir", lambda: str(directory))
    monkeypatch.setattr(compile_cache, "_warned", set())
    return directory


def _traced_counter():
    """A jitted step that counts how often it is traced, with its arguments."""
    traced = []

    def step(state, batch):
        traced.append(1)
        return state * 2.0 + batch["x"].sum(), {"loss": jnp.sum(state)}

    state = jnp.arange(6.0).reshape(2, 3)
    return traced, jax.jit(step, donate_argnums=0), state, {"x": jnp.arange(4.0)}


def test_compile_or_load_loads_a_step_without_tracing_it(steps_dir):
    traced, step, state, batch = _traced_counter()
    expected = jax.jit(lambda s, b: (s * 2.0 + b["x"].sum(), {"loss": jnp.sum(s)}))(state, batch)
    lowered = []
    compiled, found = compile_cache.compile_or_load("step", step, (state, batch), ("config",),
                                                    on_lowered=lambda: lowered.append(1))
    assert traced == [1] and lowered == [1] and found.startswith("compile cache")
    (entry,) = os.listdir(steps_dir)
    assert entry.startswith("step-") and oct(os.stat(steps_dir / entry).st_mode & 0o777) == "0o644"

    traced, step, _, _ = _traced_counter()  # as in a new process: jit's in-memory cache knows nothing of it
    loaded, found = compile_cache.compile_or_load("step", step, (state, batch), ("config",),
                                                  on_lowered=lambda: lowered.append(2))
    assert traced == [], "a hit must not trace the function"
    assert lowered == [1, 2] and found.startswith("compile cache hit")
    out, metrics = loaded(jnp.array(state), batch)  # the donation of the loaded step holds: pass a copy
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(metrics["loss"], expected[1]["loss"])
    assert loaded.memory_analysis() is not None  # the trainer's memory report reads it


def test_compile_or_load_key_covers_its_parts_and_the_arguments(steps_dir):
    traced, step, state, batch = _traced_counter()
    compile_cache.compile_or_load("step", step, (state, batch), ("config", np.arange(3.0)))
    for other in [(("config", np.arange(3.0) + 1), (state, batch)),  # a value computed from the data
                  (("other config", np.arange(3.0)), (state, batch)),
                  (("config", np.arange(3.0)), (state.astype(jnp.bfloat16), batch)),
                  (("config", np.arange(3.0)), (state, {"x": jnp.arange(5.0)}))]:
        key_parts, args = other
        compile_cache.compile_or_load("step", step, args, key_parts)
    assert len(os.listdir(steps_dir)) == 5  # one entry each (jit's in-memory cache spares some of the tracing)
    key = compile_cache.step_key("step", (state, batch), ("config", np.arange(3.0)))
    assert key == compile_cache.step_key("step", (jax.ShapeDtypeStruct(state.shape, state.dtype,
                                                                       sharding=state.sharding), batch),
                                         ("config", np.arange(3.0)))  # abstract arguments give the same key


def test_compile_or_load_replaces_a_damaged_entry(steps_dir, capsys):
    traced, step, state, batch = _traced_counter()
    compile_cache.compile_or_load("step", step, (state, batch))
    (entry,) = steps_dir.iterdir()
    entry.write_bytes(b"not an executable")
    compiled, found = compile_cache.compile_or_load("step", step, (state, batch))
    assert "hit" not in found
    assert f"warning: the cached step in {entry} did not load" in capsys.readouterr().err
    np.testing.assert_array_equal(compiled(jnp.array(state), batch)[0], state * 2.0 + 6.0)
    assert entry.read_bytes() != b"not an executable"  # replaced by the new compilation
    assert compile_cache.compile_or_load("step", step, (state, batch))[1].startswith("compile cache hit")
    assert not [p for p in os.listdir(steps_dir) if p.startswith(".")]


def test_compile_or_load_keeps_no_executable_jax_loaded_from_its_cache(steps_dir, monkeypatch):
    # XLA:CPU serialises an executable it deserialised without its compiled functions: such an entry would fail at
    # its first run, so a step jax's own cache gave is not stored (the next fresh compilation is).
    calls = iter([{"hits": 0, "misses": 0}, {"hits": 1, "misses": 0}, {"hits": 1, "misses": 0}])
    monkeypatch.setattr(compile_cache, "counts", lambda: next(calls))
    traced, step, state, batch = _traced_counter()
    compiled, found = compile_cache.compile_or_load("step", step, (state, batch))
    assert found.startswith("compile cache hit") and not steps_dir.exists()


def test_compile_or_load_keeps_the_most_recently_used_entries(steps_dir, monkeypatch):
    monkeypatch.setattr(compile_cache, "MAX_STEP_ENTRIES", 2)
    traced, step, state, batch = _traced_counter()
    compile_cache.compile_or_load("step", step, (state, batch), ("a",))
    first = set(os.listdir(steps_dir))
    os.utime(steps_dir / first.pop(), (1, 1))  # long unused
    compile_cache.compile_or_load("step", step, (state, batch), ("b",))
    compile_cache.compile_or_load("step", step, (state, batch), ("c",))
    assert len(os.listdir(steps_dir)) == 2
    entries = set(os.listdir(steps_dir))
    compile_cache.compile_or_load("step", step, (state, batch), ("a",))
    assert len(set(os.listdir(steps_dir)) - entries) == 1  # "a" was the one removed: compiled and stored again


def test_compile_or_load_without_its_folder_compiles(monkeypatch):
    monkeypatch.setattr(compile_cache, "_steps_dir", lambda: None)
    traced, step, state, batch = _traced_counter()
    found = [compile_cache.compile_or_load("step", step, (state, batch))[1] for _ in range(2)]
    assert "hit" not in found[1]


def test_steps_folder_only_under_a_command_with_a_source_file(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_cache, "_steps_on", False)
    assert compile_cache._steps_dir() is None  # a library caller (may patch what the key cannot see)
    monkeypatch.setattr(compile_cache, "_steps_on", True)
    monkeypatch.setattr(compile_cache, "active_dir", lambda: str(tmp_path))
    monkeypatch.setattr(sys.modules["__main__"], "__file__", __file__, raising=False)  # python -m / a script
    assert compile_cache._steps_dir() == str(tmp_path / compile_cache.STEPS_SUBDIR)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", None, raising=False)  # a notebook, python -c
    assert compile_cache._steps_dir() is None
    monkeypatch.setattr(compile_cache, "active_dir", lambda: "gs://bucket/jax")
    assert compile_cache._steps_dir() is None
