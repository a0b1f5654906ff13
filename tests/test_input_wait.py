"""The input side of the loop: batches prefetched onto the devices (config.data.prefetch), and the share of the
time the loop waits for them (input_wait_share), with the hint a run that waits on its input gets."""

import threading
import time

import grain
import jax
import numpy as np
import pytest
from helpers import train_losses
from test_train import tiny_config

from vidjax import sharding, train
from vidjax.metric_writer import read_metrics

HINT = "Input is the bottleneck"


def train_rows(workdir):
    return [row for row in read_metrics(workdir) if row["split"] == "train"]


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "vidjax-input-prefetch" and t.is_alive()]


def with_train_batches(monkeypatch, fn):
    """Every training batch of `train.train_and_evaluate` passes through `fn(batch)` (the eval split's do not)."""
    real = train.pipeline.make_dataset

    def make_dataset(config, split, *args, **kwargs):
        ds = real(config, split, *args, **kwargs)
        return ds.map(fn) if split == "train" else ds

    monkeypatch.setattr(train.pipeline, "make_dataset", make_dataset)


def slow_steps(monkeypatch, seconds):
    """Each train step takes `seconds` longer on the host: a step slower than its input."""
    real = train.AheadOfTimeStep.__call__

    def call(self, state, batch):
        time.sleep(seconds)
        return real(self, state, batch)

    monkeypatch.setattr(train.AheadOfTimeStep, "__call__", call)


@pytest.mark.slow
def test_prefetch_gives_the_same_losses_and_every_row_its_input_share(tmp_path):
    """Prefetch on and off: the same losses bit for bit; every logged train row has input_wait_share in [0, 1]."""
    runs = {}
    for prefetch in (0, 2):
        config = tiny_config(total_steps=6, checkpoint_every=3)
        config.data.prefetch = prefetch
        train.train_and_evaluate(config, str(tmp_path / str(prefetch)), devices=jax.devices()[:1])
        rows = train_rows(tmp_path / str(prefetch))
        assert [row["step"] for row in rows] == list(range(1, 7))
        assert all(0.0 <= row["input_wait_share"] <= 1.0 for row in rows), rows
        runs[prefetch] = train_losses(tmp_path / str(prefetch))
    assert runs[0] == runs[2]
    assert not prefetch_threads()


def test_slow_input_shows_a_high_share_and_the_hint_once(tmp_path, monkeypatch, capsys):
    """Each training batch takes 0.3 s to read, a step a few ms: once the batches prefetched while the step compiled
    are used up, the loop waits on input nearly all the time, and says so once."""
    with_train_batches(monkeypatch, lambda batch: (time.sleep(0.3), batch)[1])
    config = tiny_config(total_steps=8, checkpoint_every=8)
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    shares = [row["input_wait_share"] for row in train_rows(tmp_path)]
    assert shares[0] == 0.0 and all(share > 0.5 for share in shares[-3:]), shares  # the first: compilation
    assert "| input " in out
    assert out.count(HINT) == 1, out
    hint = next(line for line in out.splitlines() if HINT in line)
    assert "--config.data.num_workers (now 0;" in hint and "--config.data.num_samples (now 1;" in hint, hint


def test_a_step_slower_than_its_input_gets_no_hint(tmp_path, monkeypatch, capsys):
    slow_steps(monkeypatch, 0.1)
    train.train_and_evaluate(tiny_config(total_steps=6, checkpoint_every=6), str(tmp_path),
                             devices=jax.devices()[:1])
    assert HINT not in capsys.readouterr().out
    assert all(0.0 <= row["input_wait_share"] <= 1.0 for row in train_rows(tmp_path))


class SourceBroke(Exception):
    pass


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_input_error_reaches_the_caller_and_stops_the_thread(tmp_path, monkeypatch, prefetch):
    """A source failing at the 4th training batch: the run raises that exception (type and message), and no
    prefetch thread is left running."""
    drawn = iter(range(1000))

    def fail_at_fourth(batch):
        if next(drawn) == 3:
            raise SourceBroke("clip 3 is unreadable")
        return batch

    with_train_batches(monkeypatch, fail_at_fourth)
    config = tiny_config(total_steps=8, checkpoint_every=8)
    config.data.prefetch = prefetch
    started = time.perf_counter()
    with pytest.raises(SourceBroke, match="clip 3 is unreadable"):
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert time.perf_counter() - started < 120
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not prefetch_threads()
    assert max(row["step"] for row in train_rows(tmp_path)) <= 3


def batch_iterator(num_batches=None):
    """A grain iterator of batches {"x": int32 (8,)}, each row its element index; infinite without num_batches."""
    ds = grain.MapDataset.range(10 ** 6 if num_batches is None else 8 * num_batches)
    return iter(ds.map(lambda i: {"x": np.int32(i)}).to_iter_dataset().batch(8))


def one_device_put():
    config = tiny_config()
    return train.batch_putter(config, sharding.create_mesh(config.mesh, jax.devices()[:1]))


def test_position_is_just_after_the_last_batch_returned():
    """What a checkpoint saves: the iterator's state after the batches `next()` returned, though the thread has
    read further; an iterator set to it continues with the next unconsumed batch."""
    batches = train.GlobalBatches(batch_iterator(), one_device_put(), depth=3, count=100)
    try:
        assert batches.position().get_state() == batch_iterator().get_state()
        for _ in range(4):
            next(batches)
        time.sleep(0.2)  # the thread fills its queue: the iterator is 3 batches ahead
        reference = batch_iterator()
        for _ in range(4):
            next(reference)
        assert batches.position().get_state() == reference.get_state()
        resumed = batch_iterator()
        resumed.set_state(batches.position().get_state())
        np.testing.assert_array_equal(next(resumed)["x"], np.asarray(next(batches)["x"]))
    finally:
        batches.close()
    assert not prefetch_threads()


def test_the_thread_stops_after_count_batches_and_on_close_with_a_full_queue():
    batches = train.GlobalBatches(batch_iterator(), one_device_put(), depth=2, count=3)
    assert [int(next(batches)["x"][0]) for _ in range(3)] == [0, 8, 16]
    with pytest.raises(RuntimeError, match="more training batches were asked for than the run needs"):
        next(batches)
    batches.close()

    batches = train.GlobalBatches(batch_iterator(), one_device_put(), depth=2, count=100)
    time.sleep(0.2)  # queue full, the thread waiting to put its third batch
    started = time.perf_counter()
    batches.close()
    assert time.perf_counter() - started < 2 and not prefetch_threads()


def test_the_end_of_the_data_reaches_the_caller_as_stop_iteration():
    batches = train.GlobalBatches(batch_iterator(num_batches=2), one_device_put(), depth=2, count=10)
    try:
        assert len([next(batches) for _ in range(2)]) == 2
        for _ in range(2):  # and again: the error stays
            with pytest.raises(StopIteration):
                next(batches)
    finally:
        batches.close()
