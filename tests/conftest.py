"""Test set-up: 8 simulated CPU devices, set before jax initialises its backend; one compilation cache per run."""

import json
import os
import pathlib
import shutil
import tempfile

# XLA:CPU's generated code at LLVM -O1 rather than -O2 where a test runs what it compiles many times (the `optimized`
# marker below). Measured (CPU seconds, one process): a 4-strategy sharded-equality test 29 -> 23.5, a 60-step
# TimeSformer runlocal run 46 -> 46.
# XLA:CPU's older loop emitters rather than its MLIR fusion emitters: the same programs compile faster and run as fast.
# Measured (one process, each after the other): a sharded train test plus a ViViT strategies test 38.6 s -> 31.7 s;
# 150 TimeSformer runlocal steps 37.8 s -> 36.4 s. jaxlib 0.11 has no loop emitters left, and its XLA aborts the
# process on the flag ("Unknown flag in XLA_FLAGS", seen with 0.11.2): there the flag is left out. The commands the
# tests start get the same choice (`helpers.COMMAND_XLA_FLAGS`, through the variable).
_LOOP_EMITTERS = "VIDJAX_TEST_LOOP_EMITTERS"


def _loop_emitters_flag() -> str:
    from importlib.metadata import version  # no jax import: XLA_FLAGS must be set before jax is

    release = tuple(int(part) for part in version("jaxlib").split(".")[:2])
    return "--xla_cpu_use_fusion_emitters=false" if release < (0, 11) else ""


os.environ[_LOOP_EMITTERS] = _loop_emitters_flag()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1 "
    + os.environ[_LOOP_EMITTERS]
).strip()
# Most tests compile far more than they run: their programs are compiled with jax's "most optimisations off" (LLVM at
# -O0 without its expensive passes; the same HLO passes, the same values), and so are those of the commands they start
# (the variable is inherited). A test marked `optimized` (the runlocal learning runs: a thousand steps of one
# program) and the commands it starts compile as users' runs do (`pytest_runtest_setup` below). Measured on 2 cores, the
# suite's files other than the five runlocal recipes, each way in one run of `python -m pytest -n 2 --dist loadfile`:
# 2,247 worker-seconds -> 1,643; 150 runlocal TimeSformer steps 4.6 steps/s at -O1, 1.95 at -O0.
_NO_OPTIMISATIONS = "JAX_DISABLE_MOST_OPTIMIZATIONS"
os.environ[_NO_OPTIMISATIONS] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_jax_cache_dir = None  # the compilation cache this process made (and removes at the end); None: it made none
_SHARED_CACHE = "VIDJAX_TEST_JAX_CACHE"  # the controller's cache directory, inherited by the xdist workers


def pytest_configure(config):
    """The `optimized` marker; a persistent compilation cache that lives for this test run only, shared by the xdist
    workers: many tests build the same tiny configs, in files that run on either worker, and on CPU compiling a
    train step takes far longer than running it, so each distinct program compiles once per run. A hit loads the
    executable XLA compiled before (same flags, same simulated devices), so what runs is unchanged. The cache is
    bounded, which makes jax lock it for each read and write: two processes never see one another's half-written
    entries. Set here, before any test module is imported: jax decides whether to use the cache at its first
    compilation."""
    import jax

    config.addinivalue_line("markers", "optimized: compiled as users' runs are (the test runs its programs far more "
                                       "than it compiles them: a learning run)")
    config.addinivalue_line("markers", f"{SLOW}: the slow tier (the runlocal recipes' learning runs, heavy compiles, "
                                       f"long tests that are not the only test of their contract): left out unless "
                                       f"-m selects it (`-m {SLOW}`: this tier alone; `-m '{SLOW} or not {SLOW}'`: "
                                       f"both)")
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's: keep the collection order (see below)
        config.option.loadscopereorder = False
    global _jax_cache_dir
    directory = os.environ.get(_SHARED_CACHE)
    if not directory:  # the controller (or a run without workers): the workers it starts inherit the variable
        directory = _jax_cache_dir = tempfile.mkdtemp(prefix="vidjax-test-jax-cache-")
        os.environ[_SHARED_CACHE] = directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_compilation_cache_max_size", 16 * 2**30)
    # The commands tests start as child processes (`python -m vidjax.<command>`) keep their compiled programs in
    # the same folder, never the user's (vidjax.compile_cache), bounded like it so that they lock it too.
    os.environ["VIDJAX_CACHE_DIR"] = directory
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(16 * 2**30)
    # Only programs that took a second or more to compile (train steps, whole forwards): caching every eager op's
    # tiny executable cost more than compiling it again (tests/test_timesformer.py, one process: 43 CPU seconds
    # with every program cached, 30 with none cached or with this threshold).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


# `--dist loadfile` hands out whole files in collection order, each worker holding two at a time, so the run ends
# when the last long file does. The files go longest first (the longest-processing-time-first schedule), by the
# seconds each took in a recorded run (tests/durations.json); a file not recorded there goes after the recorded
# ones of a minute or more. pytest-xdist's own reordering (3.6 on: by number of tests, most first) put the one-test
# runlocal recipe files last, and one worker then ran them alone for the last quarter of an hour: it is turned off
# in pytest_configure. A file's seconds are its tier's: durations.json holds {"default": {file: s}, "slow": {...}}
# (a run with another -m expression orders by the two added). `VIDJAX_RECORD_DURATIONS=1 python -m pytest -n 2
# --dist loadfile` (and with `-m slow`) writes the figures of the files it ran there, for its tier.
_DURATIONS = pathlib.Path(__file__).with_name("durations.json")
_UNRECORDED = 60.0  # seconds assumed for a file not in durations.json
_recorded: dict[str, float] = {}  # file -> seconds of this run, summed over its tests' phases (controller only)


def _tier_name(config) -> str | None:
    """"default" (no -m), SLOW (-m slow), or None (another expression: both tiers, or a selection of its own)."""
    expression = (config.option.markexpr or "").strip()
    return "default" if not expression else SLOW if expression == SLOW else None


def _durations(config) -> dict[str, float]:
    """The recorded seconds of each file in this run's tier (both tiers' added, for another -m expression)."""
    recorded = json.loads(_DURATIONS.read_text()) if _DURATIONS.exists() else {}
    tier = _tier_name(config)
    if tier is not None:
        return recorded.get(tier, {})
    both: dict[str, float] = {}
    for figures in recorded.values():
        for name, seconds in figures.items():
            both[name] = both.get(name, 0.0) + seconds
    return both


def pytest_runtest_setup(item):
    """Before the test's fixtures: its programs, and those of the commands it starts, compiled with optimisations
    (marked `optimized`) or with most of them off (the default here)."""
    import jax

    optimized = item.get_closest_marker("optimized") is not None
    jax.config.update("jax_disable_most_optimizations", not optimized)
    os.environ[_NO_OPTIMISATIONS] = "0" if optimized else "1"


# Two tiers (docs/architecture.md, "Testing"). The default tier is what the README's test command, and so CI, runs:
# every test not marked `slow`, within its 15-minute budget on 2 cores, with one short learning run per kind of task
# (tests/test_learning_smoke.py). The slow tier is the tests marked `slow`, run with `-m slow` before an issue that
# changes models, tasks, the trainer, the data path or a config is called done. A run given any -m expression selects
# by it alone.
SLOW = "slow"


def _tier(config, items):
    """Leaves the slow tier out of a run that gives no -m expression; the deselected tests are reported as such."""
    if config.option.markexpr:
        return items
    kept, slow = [], []
    for item in items:
        (slow if item.get_closest_marker(SLOW) else kept).append(item)
    if slow:
        config.hook.pytest_deselected(items=slow)
    return kept


def pytest_collection_modifyitems(config, items):
    items[:] = _tier(config, items)
    durations = _durations(config)
    items.sort(key=lambda item: -durations.get(item.path.name, _UNRECORDED))  # stable: a file's tests stay in order


def _recording() -> bool:
    """Whether this process records durations: asked to, and not an xdist worker (the controller sees every
    worker's reports)."""
    return bool(os.environ.get("VIDJAX_RECORD_DURATIONS")) and "PYTEST_XDIST_WORKER" not in os.environ


def pytest_runtest_logreport(report):
    if _recording():  # setup, call and teardown each report their own seconds
        name = pathlib.Path(report.fspath).name
        _recorded[name] = _recorded.get(name, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    tier = _tier_name(session.config)
    if _recording() and _recorded and exitstatus == 0 and tier is not None:  # its files' figures are replaced
        recorded = json.loads(_DURATIONS.read_text()) if _DURATIONS.exists() else {}
        merged = {**recorded.get(tier, {}), **_recorded}
        recorded[tier] = {name: round(seconds, 1) for name, seconds in sorted(merged.items(), key=lambda kv: -kv[1])}
        _DURATIONS.write_text(json.dumps(recorded, indent=1) + "\n")


def pytest_unconfigure(config):
    if _jax_cache_dir:  # the process that made it, after its workers have finished
        shutil.rmtree(_jax_cache_dir, ignore_errors=True)
        for name in (_SHARED_CACHE, "VIDJAX_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE"):
            os.environ.pop(name, None)


@pytest.fixture(scope="module")
def generate_clips_once():
    """The embedded dataset's clips, each generated on first use and then copied from memory, for this module.

    A clip is a pure function of its source's settings and index (vidjax.data.synthetic), so the batches are the
    ones the generator gives; long training runs read every clip many times, and generating them was a third of
    each of their steps."""
    from vidjax.data import synthetic

    generate = synthetic.SyntheticVideoSource.__getitem__
    clips: dict = {}

    def getitem(self, index):
        key = (repr(self), index)
        if key not in clips:
            clips[key] = generate(self, index)
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in clips[key].items()}  # captions: tuples

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic.SyntheticVideoSource, "__getitem__", getitem)
        yield


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A tiny TFDS dataset prepared offline: uint8 frames, encoded-video bytes and a ClassLabel."""
    import tensorflow_datasets as tfds

    class TinyClips(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(shape=(None, 6, 8, 3), dtype=np.uint8),
                "encoded": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.ClassLabel(names=["jump", "run", "walk"]),
                "score": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(5), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"frames": np.full((2 + i, 6, 8, 3), i, np.uint8), "encoded": b"video-%d" % i,
                          "label": i % 3, "score": np.float32([i, -i])}

    data_dir = tmp_path_factory.mktemp("tfds")
    TinyClips(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir
