"""Faults: preemption by SIGTERM, damaged checkpoints, skipped non-finite / spiking steps, restore onto other meshes."""

import gc
import glob
import itertools
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import COMMAND_XLA_FLAGS, tiered, train_losses
from test_train import tiny_config

from vidjax import preemption, train
from vidjax.metric_writer import read_metrics
from vidjax.train import checkpoint

TESTS = pathlib.Path(__file__).parent


def garble(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\x00garbled\xff" * 8)


@pytest.mark.parametrize("damage", tiered(["missing", "garbled"]))
def test_damaged_newest_checkpoint_is_skipped(tmp_path, capsys, caplog, monkeypatch, damage):
    """The newest step folder lost or garbled files after it was written: resume from the one before, warned.

    Quietly otherwise: the reads orbax leaves in flight when one fails do not report to a closed event loop (they
    used to print hundreds of ignored "Event loop is closed" errors).
    """
    config = tiny_config(total_steps=12, checkpoint_every=6)  # the train step of test_sigterm_...: compiled once
    devices = jax.devices()[:1]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.train_and_evaluate(config, str(full), devices=devices)
    shutil.copytree(full, cut)
    data_files = glob.glob(str(cut / "checkpoints" / "12" / "state" / "ocdbt.process_0" / "d" / "*"))
    assert data_files
    for path in data_files:
        os.remove(path) if damage == "missing" else garble(path)
    capsys.readouterr()
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    result = train.train_and_evaluate(config, str(cut), devices=devices)
    gc.collect()
    assert not unraisable, [(u.exc_value, u.object) for u in unraisable[:3]]
    assert result["resumed"] and result["step"] == 12
    assert f"Resuming from checkpoint at step 6 in {cut / 'checkpoints' / '6'}" in capsys.readouterr().out
    assert any(f"Checkpoint {cut / 'checkpoints' / '12'} is damaged and is skipped" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    assert os.listdir(cut / "corrupt_checkpoints") == ["12"]  # kept aside for inspection
    assert sorted(os.listdir(cut / "checkpoints"), key=int) == ["6", "12"]  # step 12 written again
    a, b = train_losses(full), train_losses(cut)
    for step in range(7, 13):
        assert a[step] == b[step], (step, a[step], b[step])


# The child trains through `python -m vidjax.main`'s main(), with each step's input slowed by 0.2 s, so that the
# signal sent after its first step line reliably lands mid-run.
CHILD = ("import sys, time; from vidjax import sharding; real = sharding.global_batch; "
         "sharding.global_batch = lambda *a: (time.sleep(0.2), real(*a))[1]; "
         "from absl import app; from vidjax import cli; from vidjax.commands import main; "
         "app.run(lambda argv: sys.exit(main.main(argv)), flags_parser=cli.parse_flags)")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_4_and_resumes_exactly(tmp_path):
    total = 12
    config_file = tmp_path / "tiny.py"
    # One encoder block: the three runs start up and compile more than they train (the test took 15.5 CPU s, 18 with
    # the tiny model's two blocks).
    config_file.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom test_train import tiny_config\n\n\n"
                           f"def get_config():\n    return tiny_config(total_steps={total}, checkpoint_every=1000, "
                           f"model=dict(depth=1))\n")
    # Every run is a child process of one make: one device, the same XLA flags. Runs compared bit for bit must be
    # compiled alike; this process's 8 simulated devices and its flags once made the resumed run's last losses
    # differ from an uninterrupted run here in their last bit.
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {COMMAND_XLA_FLAGS}",
               JAX_PLATFORMS="cpu")

    def start(workdir):
        return subprocess.Popen([sys.executable, "-c", CHILD, f"--config={config_file}", f"--workdir={workdir}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=TESTS.parent)

    cut, full = tmp_path / "cut", tmp_path / "full"
    child, reference = start(cut), start(full)
    lines, sent = [], []

    def read():  # signals right after the first step line, while the reference run trains beside it
        for line in child.stdout:
            lines.append(line)
            if line.startswith("step ") and not sent:
                child.send_signal(signal.SIGTERM)
                sent.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    reference_output = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, reference_output
    reader.join(timeout=300)
    output = "".join(lines)
    assert child.wait(timeout=60) == 4, output
    stopped = [line for line in lines if "stopped by" in line.lower()]
    assert len(stopped) == 1 and stopped[0].startswith("stopped by SIGTERM: checkpoint of step "), output
    step = int(stopped[0].split()[6].split("/")[0])
    assert 1 < step < total, output  # stopped mid-run, after the step it was told at
    assert sorted(os.listdir(cut / "checkpoints")) == [str(step)]
    assert sorted(train_losses(cut)) == list(range(1, step + 1))

    resume = start(cut)
    resumed_output = resume.communicate(timeout=300)[0]
    assert resume.returncode == 0 and f"Resuming from checkpoint at step {step}" in resumed_output, resumed_output
    assert "Metadata file does not exist" not in resumed_output, resumed_output
    full_losses, resumed = train_losses(full), train_losses(cut)
    assert sorted(resumed) == sorted(full_losses) == list(range(1, total + 1))
    for s in range(1, total + 1):
        assert full_losses[s] == resumed[s], (s, full_losses[s], resumed[s])  # bit for bit


def test_sigint_asks_once_then_interrupts_and_ignored_signals_stay_ignored():
    """One process: the first Ctrl-C asks for a stop at the next step; a second one interrupts at once (the handler
    put the previous one back); a signal a launcher set to be ignored (nohup, a shell's `&`) stays ignored."""
    # Python's own Ctrl-C handler, whatever this test process inherited (a `nohup ... &` launch ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ask_once_then_interrupt()
    finally:
        signal.signal(signal.SIGINT, inherited)

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with preemption.StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            assert not stop.requested(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_start_up_stop_lost_on_its_way_is_raised_at_the_start_up_s_end():
    """Before `arm()`, a signal goes on to the handler it replaced. When what that handler raised is lost on its way
    (Python drops an exception raised in a gc callback, and C code may clear one), `arm()`, the start-up's end,
    raises it, once; a handler that raises nothing is left alone."""
    class Lost(KeyboardInterrupt):
        pass

    def raising(signum, frame):
        raise Lost(signum)

    inherited = signal.getsignal(signal.SIGINT)
    try:
        for previous, raised in ((raising, True), (lambda signum, frame: None, False)):
            signal.signal(signal.SIGINT, previous)
            with preemption.StopOnSignal(armed=False) as stop:
                try:
                    signal.raise_signal(signal.SIGINT)  # the handler runs before this call returns
                except Lost:
                    pass  # dropped, as where a gc callback runs
                if raised:
                    with pytest.raises(Lost):
                        stop.arm()
                stop.arm()  # once only, and nothing from a handler that raised nothing
                assert stop.received is None
    finally:
        signal.signal(signal.SIGINT, inherited)


def scale_loss_at(monkeypatch, scales):
    """Multiplies the loss of the steps in `scales` (1-based) inside the jitted step: NaN makes the loss and the
    gradients non-finite, a large factor makes a finite spike."""
    task = type(train.tasks.training_of("pretrain"))
    real_batch, real_loss_fn = train.sharding.global_batch, task.loss_fn
    calls = itertools.count(1)

    def global_batch(local, batch_sharding):
        scale = np.full(len(local["video"]), scales.get(next(calls), 1.0), np.float32)
        return real_batch(dict(local, loss_scale=scale), batch_sharding)

    def get_loss_fn(self, *args):
        loss_fn = real_loss_fn(self, *args)

        def scaled(model, batch, rng):
            loss, aux = loss_fn(model, batch, rng)
            return loss * jnp.mean(batch["loss_scale"]), aux
        return scaled

    monkeypatch.setattr(train.sharding, "global_batch", global_batch)
    monkeypatch.setattr(task, "loss_fn", get_loss_fn)


def test_skipped_steps_are_counted_and_stop_after_max_in_a_row(tmp_path, monkeypatch):
    """Non-finite steps 3, 7, 8, 9 and a loss spike at step 5: skipped with params and optimizer state kept;
    with max_skipped_steps=2 the third in a row (step 9) stops training."""
    config = tiny_config(total_steps=12, checkpoint_every=1, keep_checkpoints=12, max_skipped_steps=2)
    config.loss_spike.update(factor=3.0, decay=0.9, min_steps=2)
    nan = float("nan")
    scale_loss_at(monkeypatch, {3: nan, 5: 10.0, 7: nan, 8: nan, 9: nan})
    with pytest.raises(train.NonFiniteLossError, match=r"diverged at step 9: loss nan.*not finite \(3 steps in a row "
                       r"skipped, more than config.max_skipped_steps=2\).*last good checkpoint is step 8"):
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    rows = {r["step"]: r for r in read_metrics(tmp_path) if r["split"] == "train"}
    assert sorted(rows) == list(range(1, 9))
    assert [rows[s]["skipped_steps"] for s in range(1, 9)] == [0, 0, 1, 1, 2, 2, 3, 4]
    assert rows[3]["loss"] == "nan" and rows[5]["loss"] > 3 * rows[4]["loss"]  # non-finite values as strings

    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=12)
    target = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    states = {s: ckpt.restore(s, target) for s in (2, 3, 4, 5, 6, 8)}
    ckpt.close()
    same = jax.tree.map(np.array_equal, {k: v for k, v in states[2].items() if k != "step"},
                        {k: v for k, v in states[3].items() if k != "step"})
    assert all(jax.tree.leaves(same))  # a skipped step keeps params, optimizer state and the spike statistics
    assert int(states[3]["step"]) == 3 and int(states[3]["loss_stats"]["count"]) == 2
    assert not np.array_equal(states[4]["params"]["encoder"]["patch_embed"]["kernel"],
                              states[3]["params"]["encoder"]["patch_embed"]["kernel"])
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, states[5]["params"], states[4]["params"])))  # spike
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, states[8]["params"], states[6]["params"])))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(states[8]["params"]))


@pytest.mark.parametrize("devices,mesh", [(4, (1, 4, 1)), (1, (1, 1, 1))])
def test_restore_onto_a_different_mesh(tmp_path_factory, devices, mesh):
    """Saved on 8 devices with fsdp=4, restored on 4 (fsdp=4, then each device holds a quarter of every embed
    axis) and on 1: the same parameters and optimizer state.

    The saved train state holds a different value in every element of every leaf (parameters and optimizer moments
    alike), so a shard restored to the wrong place cannot go unnoticed; no training needed to make it."""
    workdir = tmp_path_factory.getbasetemp() / "saved_on_8"
    if not workdir.exists():
        config = tiny_config()
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 4, 1
        setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()))
        leaves, treedef = jax.tree.flatten(setup.abstract_state)
        starts = np.cumsum([0] + [x.size for x in leaves[:-1]])

        def distinct():
            return jax.tree.unflatten(treedef, [(jnp.arange(x.size) + start).reshape(x.shape).astype(x.dtype)
                                                for x, start in zip(leaves, starts, strict=True)])

        saved = jax.jit(distinct, out_shardings=setup.state_shardings)()
        ckpt = checkpoint.Checkpointer(str(workdir))
        ckpt.save(2, saved, None, config)
        ckpt.close()
        np.savez(workdir / "state.npz", *[np.asarray(x) for x in jax.tree.leaves(saved)])
    expected = np.load(workdir / "state.npz")
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:devices]))
    ckpt = checkpoint.Checkpointer(str(workdir))
    step, state = ckpt.restore_latest(checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings))
    ckpt.close()
    assert step == 2
    leaves = jax.tree.leaves(state)
    assert len(leaves) == len(expected.files)
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(leaf), expected[f"arr_{i}"])
    kernel = state["params"]["encoder"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert len(kernel.sharding.device_set) == devices
    assert {s.data.shape for s in kernel.addressable_shards} == {(32 // mesh[1], 128)}


def _ask_once_then_interrupt():
    """The Ctrl-C half of test_sigint_asks_once_then_interrupts_and_ignored_signals_stay_ignored."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.StopOnSignal() as stop:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # Python runs the handler between bytecodes of the main thread; a sleep is cut short
        assert stop.requested(2) and stop.name == "SIGINT" and stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
