"""The grain input pipeline: determinism, per-process shares, even eval splits, bad videos dropped."""

import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
from helpers import input_spec
from test_decode import make_video
from test_train import tiny_config

from vidjax.data import pipeline


def batches(config, split, n, process_index=0, process_count=1):
    source = pipeline.make_source(config.data, split)
    ds = pipeline.make_dataset(config, split, source, input_spec(config), process_index=process_index,
                               process_count=process_count)
    it = iter(ds)
    return [next(it) for _ in range(n)] if n else list(it)


# A program that reads through grain worker processes and ends with its iterator still open and its last batch still
# held, as a script (or a notebook, or the trainer, which leaves its iterator to the exit) does.
_READS_AND_EXITS = """
from test_train import tiny_config

from vidjax.data import pipeline

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    config = tiny_config(batch_size=2)
    config.data.num_workers = 1
    iterator = iter(pipeline.make_dataset(config, "train", pipeline.make_source(config.data, "train"),
                                          pipeline.InputSpec()))
    batch = [next(iterator) for _ in range(3)][-1]
    print(type(batch["video"]).__name__, batch["video"].shape)
"""


def test_grain_workers_shared_memory_is_unlinked_at_exit(tmp_path):
    """Issue 48: every element a grain worker hands over is a block of shared memory, unlinked when its arrays go, on
    grain's own thread pool; at exit multiprocessing terminated that pool before it closed grain's iterators, and the
    blocks still queued, read ahead or held were left to the resource tracker ("There appear to be N leaked
    shared_memory objects to clean up at shutdown"): `pipeline.in_workers` releases them at exit."""
    script = tmp_path / "reads_and_exits.py"
    script.write_text(_READS_AND_EXITS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SharedMemoryArray", "(2,", "4,", "32,", "32,", "3)"], done.stdout  # it went through
    assert "leaked shared_memory" not in done.stderr, done.stderr


def test_same_config_same_batches_and_exact_masks():
    config = tiny_config()
    a, b = batches(config, "train", 3), batches(config, "train", 3)
    for x, y in zip(a, b, strict=True):
        for key in ("video", "label", "mask", "index"):
            np.testing.assert_array_equal(x[key], y[key])
    batch = a[0]
    assert batch["video"].shape == (8, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["mask"].shape == (8, 32) and (batch["mask"].sum(1) == int(0.9 * 16) * 2).all()
    other_seed = tiny_config(seed=1)
    assert not np.array_equal(batches(other_seed, "train", 1)[0]["index"], batch["index"])


def test_embedded_clips_with_repeated_sampling_are_k_rows_each_with_their_own_masks():
    # The embedded dataset is not augmented: each video's num_samples clips are the same clip, masked k ways.
    config = tiny_config()
    config.data.num_samples = 4
    batch = batches(config, "train", 1)[0]
    assert batch["video"].shape == (8, 4, 32, 32, 3) and batch["mask"].shape == (8, 32)
    assert batch["decode_failures"].shape == (8,)
    for first in (0, 4):
        assert (batch["index"][first:first + 4] == batch["index"][first]).all()
        assert all(np.array_equal(batch["video"][first], batch["video"][first + i]) for i in range(4))
        assert len({batch["mask"][first + i].tobytes() for i in range(4)}) > 1
    assert batch["index"][0] != batch["index"][4]


def test_processes_read_disjoint_shares_with_independent_masks():
    config = tiny_config()  # 64 training clips, global batch 8: 4 per process, 8 steps per epoch
    shares = [batches(config, "train", 8, process_index=p, process_count=2) for p in range(2)]
    seen = [np.concatenate([b["index"] for b in share]) for share in shares]
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(64))
    # Each process's masks are its own draws, not a copy of the other's.
    assert not np.array_equal(shares[0][0]["mask"], shares[1][0]["mask"])


def test_eval_split_is_cut_to_whole_global_batches():
    config = tiny_config()
    config.data.num_eval = 11  # global batch 8: the last 3 clips cannot fill a batch on every process
    shares = [batches(config, "eval", 0, process_index=p, process_count=2) for p in range(2)]
    assert [len(share) for share in shares] == [1, 1]
    seen = sorted(np.concatenate([b["index"] for share in shares for b in share]))
    assert seen == list(range(8))
    np.testing.assert_array_equal(batches(config, "eval", 0)[0]["mask"], batches(config, "eval", 0)[0]["mask"])


def test_undecodable_videos_are_skipped_not_fatal(tmp_path, caplog):
    lines = []
    for i in range(6):
        path = tmp_path / f"clip{i}.mp4"
        make_video(path, num_frames=12)
        if i == 2:
            path.write_bytes(path.read_bytes()[:300])  # truncated: cannot be decoded
        lines.append(f"{path.name} {i % 3}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(batch_size=2)
    config.data.update(dict(source="csv", train_csv=str(tmp_path / "train.csv"), eval_csv=str(tmp_path / "train.csv"),
                            root=str(tmp_path), num_classes=3, sampling_rate=2))
    out = batches(config, "eval", 0)
    # Clip 2 is replaced by another clip drawn from its own seed; every batch stays full and the count is kept.
    indices = np.concatenate([b["index"] for b in out])
    assert len(indices) == 6 and 2 not in indices and set(indices) >= {0, 1, 3, 4, 5}
    assert all(b["video"].shape == (2, 4, 32, 32, 3) for b in out)
    failures = np.concatenate([b["decode_failures"] for b in out])
    assert failures.sum() == 1 and failures[2] == 1
    assert "clip2.mp4" in caplog.text and "in its place" in caplog.text
    again = batches(config, "eval", 0)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in again]), indices)
    # The second pass (another epoch) counts the failure again but does not warn again about the same video.
    assert np.concatenate([b["decode_failures"] for b in again]).sum() == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "clip2.mp4" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def six_clips_some_broken(tmp_path, broken: set[int], **data):
    """A CSV list of six 12-frame clips (3 classes), those in `broken` cut short, as the train and eval split of a
    tiny config with `data` overrides."""
    lines = []
    for i in range(6):
        path = tmp_path / f"clip{i}.mp4"
        make_video(path, num_frames=12)
        if i in broken:
            path.write_bytes(path.read_bytes()[:300])
        lines.append(f"{path.name} {i % 3}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(batch_size=2)
    config.data.update(dict(source="csv", train_csv=str(tmp_path / "list.csv"), eval_csv=str(tmp_path / "list.csv"),
                            root=str(tmp_path), num_classes=3, sampling_rate=2, **data))
    return config


def test_decode_failures_count_each_broken_video_once_when_a_substitute_is_broken_too(tmp_path, caplog):
    """Half the videos broken: some replacements draw another broken video before a good one. The count is still
    the split's broken videos, each once, on its own row."""
    broken = {1, 2, 4}
    config = six_clips_some_broken(tmp_path, broken)
    caplog.set_level(logging.DEBUG, logger=pipeline.__name__)
    out = batches(config, "eval", 0)
    attempts = [r for r in caplog.records if r.getMessage().startswith("Skipping element")]
    assert len(attempts) > len(broken)  # a replacement was broken too (this seed's draws)
    failures = np.concatenate([b["decode_failures"] for b in out])
    assert failures.sum() == len(broken) and set(np.flatnonzero(failures)) == broken, failures


def test_an_eval_split_keeps_every_element_while_any_of_its_videos_decodes(tmp_path, caplog):
    """Past `max_decode_attempts` failures in a row a training element is dropped, but an evaluation element walks
    on through the split: dropping it would shift the later batches and leave the last one unscored."""
    broken = {0, 1, 2, 3}
    out = batches(six_clips_some_broken(tmp_path, broken, max_decode_attempts=1), "eval", 0)
    assert len(out) == 3 and set(np.concatenate([b["index"] for b in out])) <= {4, 5}  # every clip a good video's
    failures = np.concatenate([b["decode_failures"] for b in out])
    assert failures.sum() == len(broken) and set(np.flatnonzero(failures)) == broken, failures
    assert "Dropping element" not in caplog.text


def test_task_eval_split_is_padded_to_whole_global_batches_and_marks_the_padding():
    config = tiny_config(task="classification")
    config.data.num_eval = 11  # global batch 8: padded to 16, 5 rows marked invalid
    shares = [batches(config, "eval", 0, process_index=p, process_count=2) for p in range(2)]
    assert [len(share) for share in shares] == [2, 2]
    rows = [b for share in shares for b in share]
    valid = np.concatenate([b["valid"] for b in rows])
    index = np.concatenate([b["index"] for b in rows])
    assert valid.sum() == 11 and sorted(index[valid]) == list(range(11))
