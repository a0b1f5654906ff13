"""Every data source end to end: real video files -> make_source -> the grain pipeline -> batches, and the trainer.

One small library of videos (3 classes x 3 videos: H.264 mp4, a portrait H.264 mkv, MPEG-4 avi) is listed five
ways (class folders, a VideoMAE list, a header list with segments and regression targets, a Charades list, an
ArrayRecord pack of that list) plus the TFDS fixture. Frame j of every video is grey level 20 + STEP * j above a
textured band, so the decoded levels reveal which frames a clip holds, and crops of one frame differ.
"""

import functools
import shutil

import jax
import numpy as np
import pytest
from helpers import input_spec
from test_decode import make_video
from test_train import tiny_config

from vidjax import config_lib, train
from vidjax.commands import data_pack
from vidjax.data import pipeline, sources
from vidjax.metric_writer import read_metrics
from vidjax.ops import pixels

CLASSES = ("jump", "run", "walk")
NUM_FRAMES, STEP, BAND = 12, 12, 8  # 12 frames at 25 fps = 0.48 s; the bottom BAND rows are noise
FORMATS = (("mp4", "libx264", (36, 52)), ("mkv", "libx264", (52, 36)), ("avi", "mpeg4", (36, 52)))


def frames_of(video_id, shape):
    h, w = shape
    levels = (20 + STEP * np.arange(NUM_FRAMES)).astype(np.uint8)
    frames = np.repeat(np.broadcast_to(levels[:, None, None, None], (NUM_FRAMES, h, w, 1)), 3, axis=3).copy()
    frames[:, -BAND:] = np.random.default_rng(video_id).integers(0, 256, (NUM_FRAMES, BAND, w, 3), dtype=np.uint8)
    return frames


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("library")
    videos, charades = base / "videos", base / "charades"
    charades.mkdir()
    plain, header, actions = [], ["path,label,start,end,valence,arousal"], []
    for c, name in enumerate(CLASSES):
        (videos / name).mkdir(parents=True)
        for k, (ext, codec, shape) in enumerate(FORMATS):
            v = 3 * c + k
            rel = f"{name}/{name}_{k}.{ext}"
            make_video(videos / rel, frames=frames_of(v, shape), codec=codec)
            plain.append(f"{rel} {c}")
            segment = "0.0,0.4" if k == 0 else ","  # the first of each class: only its first 0.4 s (10 frames)
            header.append(f"{rel},{c},{segment},{v / 10},{-v / 10}")
            (charades / f"V{v}.mp4").symlink_to(videos / rel)  # Charades names every video <id>.mp4
            actions.append((f"V{v}", f"c{c:03d} 0.00 0.48;c{100 + v:03d} 0.42 0.48"))
    (base / "list.txt").write_text("\n".join(plain) + "\n")
    (base / "header.csv").write_text("\n".join(header) + "\n")
    charades_header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (base / "charades.csv").write_text(charades_header + "".join(
        f"{vid},S,Room,6,7,Yes,script,obj,desc,{acts},0.48\n" for vid, acts in actions))
    assert data_pack.main(["--csv", str(base / "list.txt"), "--root", str(videos), "--out", str(base / "pack"),
                      "--shards", "2", "--workers", "1"]) == 0
    return base


def data_for(kind, library, tfds_dir=None):
    """The config.data of one kind of source over the library (eval reads the same videos as train)."""
    common = dict(num_frames=4, image_size=32, short_side=32, sampling_rate=2, num_classes=3)
    if kind == "folder":
        return config_lib.data_config(source="folder", train_folder=str(library / "videos"),
                                      eval_folder=str(library / "videos"), **common)
    if kind in ("csv", "csv_header"):
        listing = str(library / ("list.txt" if kind == "csv" else "header.csv"))
        return config_lib.data_config(source="csv", train_csv=listing, eval_csv=listing,
                                      root=str(library / "videos"),
                                      targets="valence,arousal" if kind == "csv_header" else "", **common)
    if kind == "charades":
        listing = str(library / "charades.csv")
        return config_lib.data_config(**{**common, "num_classes": 157}, source="charades", train_csv=listing,
                                      eval_csv=listing, root=str(library / "charades"))
    if kind == "array_record":
        return config_lib.data_config(source="array_record", train_pack=str(library / "pack"),
                                      eval_pack=str(library / "pack"), **common)
    return config_lib.data_config(source="tfds", tfds_name="tiny_clips", tfds_data_dir=str(tfds_dir),
                                  eval_split="train", video_key="frames", **common)


def config_for(kind, library, tfds_dir=None, batch_size=3, **data):
    config = tiny_config(batch_size=batch_size)
    config.data = data_for(kind, library, tfds_dir)
    config.data.update(data)
    return config


def read(config, split, n=0, process_index=0, process_count=1):
    """(source, batches): n batches of the split (0: the whole eval split)."""
    source = pipeline.make_source(config.data, split)
    it = iter(pipeline.make_dataset(config, split, source, input_spec(config), process_index=process_index,
                                    process_count=process_count))
    return source, ([next(it) for _ in range(n)] if n else list(it))


def levels(video):
    """Mean grey level of the top 20 rows of each frame (clear of the noise band): (..., T)."""
    return video[..., :20, :, :].mean(axis=(-3, -2, -1))


@pytest.mark.parametrize("kind", ["folder", "csv", "csv_header", "charades", "array_record", "tfds"])
def test_every_source_batches_with_its_targets(kind, library, tfds_dir):
    batch_size = 5 if kind == "tfds" else 3
    config = config_for(kind, library, tfds_dir, batch_size=batch_size)
    source, batches = read(config, "eval")
    assert len(batches) == len(source) // batch_size >= 1
    indices = np.concatenate([b["index"] for b in batches])
    assert sorted(indices) == list(range(len(source)))  # every entry once, none dropped
    for batch in batches:
        assert batch["video"].shape == (batch_size, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
        assert batch["mask"].shape == (batch_size, 32) and batch["decode_failures"].sum() == 0
    video = np.concatenate([b["video"] for b in batches])
    if kind == "tfds":  # example n: 2 + n frames of value n, label n % 3 (fewer frames than a clip: repeated)
        labels = np.concatenate([b["label"] for b in batches])
        for row, i in enumerate(indices):
            n = int(source[i]["video"][0, 0, 0, 0])
            assert (video[row] == n).all() and labels[row] == n % 3 and labels.dtype == np.int32
        return
    # Evenly spaced test window: 4 frames, 2 apart, from the middle of the video (or of its segment).
    np.testing.assert_allclose(np.diff(levels(video), axis=-1), 2 * STEP, atol=3)
    for row, i in enumerate(indices):
        element = source[i]
        path = element.get("path") or element["source_path"]
        if kind == "charades":
            v = int(path.rsplit("V", 1)[1].split(".")[0])
            labels = np.concatenate([b["labels"] for b in batches])[row]
            # The class spans the whole video; the late action (0.42-0.48 s) is after the centre window.
            assert labels.dtype == np.float32 and np.flatnonzero(labels).tolist() == [v // 3]
            continue
        c = CLASSES.index(path.replace("\\", "/").split("/")[-2])
        assert np.concatenate([b["label"] for b in batches])[row] == c
        if kind == "csv_header":
            k = int(path.rsplit("_", 1)[1][0])
            targets = np.concatenate([b["targets"] for b in batches])[row]
            np.testing.assert_allclose(targets, [(3 * c + k) / 10, -(3 * c + k) / 10], rtol=1e-6)
            first = levels(video[row])[0]
            # The 8-frame window centred in the segment's 10 frames starts at frame 1, in the video's 12 at 2.
            np.testing.assert_allclose(first, 20 + STEP * (1 if k == 0 else 2), atol=3)


def test_multi_label_window_labels_in_training(library):
    """Charades clip labels come from the sampled window: the late action is on only when the clip reaches it."""
    config = config_for("charades", library, batch_size=3, sampling_rate=1)
    source, batches = read(config, "train", 12)
    seen_late = seen_early = False
    for batch in batches:
        for row, i in enumerate(batch["index"]):
            v = int(source[i]["path"].rsplit("V", 1)[1].split(".")[0])
            last_frame = round((levels(batch["video"][row])[-1] - 20) / STEP)  # clip = 4 consecutive frames
            late = last_frame >= 10  # the clip ends after frame 10 (0.40-0.44 s), overlapping 0.42-0.48
            expected = sorted({v // 3} | ({100 + v} if late else set()))
            assert np.flatnonzero(batch["labels"][row]).tolist() == expected
            seen_late, seen_early = seen_late or late, seen_early or not late
    assert seen_late and seen_early


@pytest.mark.parametrize("kind", ["folder", "array_record"])
def test_file_sources_shard_over_processes_and_resume_mid_epoch(kind, library):
    config = config_for(kind, library, batch_size=2)  # 1 clip per process per step
    # An epoch is 9 shuffled global elements: process 0 takes elements 0, 2, .., 8, process 1 takes 1, 3, .., 7.
    shares = [read(config, "train", n, process_index=p, process_count=2)[1] for p, n in ((0, 5), (1, 4))]
    seen = [np.concatenate([b["index"] for b in share]).tolist() for share in shares]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(9))

    source = pipeline.make_source(config.data, "train")
    dataset = pipeline.make_dataset(config, "train", source, input_spec(config))
    it = iter(dataset)
    for _ in range(5):  # into the second epoch
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(6)), strict=True):
        for key in ("video", "label", "mask", "index"):
            np.testing.assert_array_equal(got[key], want[key])
    again = read(config, "train", 11)[1][5:]
    np.testing.assert_array_equal(np.concatenate([b["video"] for b in again]),
                                  np.concatenate([b["video"] for b in expected]))


def test_repeated_augmentation_gives_differently_cropped_clips_of_one_video(library):
    config = config_for("folder", library, batch_size=4, num_samples=2, train_crop="multi_scale",
                        rand_augment="rand-m7-n2-mstd0.5", erase_prob=0.5)
    _, batches = read(config, "train", 3)
    for batch in batches:
        assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["mask"].shape == (4, 32)
        assert batch["index"].shape == batch["label"].shape == batch["decode_failures"].shape == (4,)
        np.testing.assert_array_equal(batch["index"][0::2], batch["index"][1::2])  # 2 videos, 2 clips each
        np.testing.assert_array_equal(batch["label"][0::2], batch["label"][1::2])
        for a in (0, 2):
            assert not np.array_equal(batch["video"][a], batch["video"][a + 1])
            assert not np.array_equal(batch["mask"][a], batch["mask"][a + 1])


@functools.partial(jax.jit, static_argnames="size")
def _device_crops(batch, size):
    return pixels.batch_crops(batch, size, size)


def _psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("samples", [1, 4])
def test_device_pixel_batches_cut_the_host_crops(library, samples):
    """config.data.pixels="device": the workers send each video's planes once (the region of its k crops, in the
    canvas `pipeline.pixel_canvas` sizes) with the crops' boxes and flips; the step's crops (`pixels.batch_crops`)
    equal the host path's clips within 40 dB, row for row, and everything else in the batch (labels, masks, indices)
    is the host path's, bit for bit: the same random draws."""
    host_config = config_for("csv", library, batch_size=8, num_samples=samples, train_crop="multi_scale",
                             pixels="host")
    device_config = config_for("csv", library, batch_size=8, num_samples=samples, train_crop="multi_scale",
                               pixels="device")
    canvas = pipeline.pixel_canvas(device_config.data)
    assert canvas == ((64, 64) if samples == 1 else (64, 114))  # 1.5 x the 32-pixel short side, + 16; 16:9 for k > 1
    _, host = read(host_config, "train", 3)
    _, device = read(device_config, "train", 3)
    for want, got in zip(host, device, strict=True):
        videos = 8 // samples
        assert "video" not in got and got["planes_y"].shape == (videos, 4, *canvas)
        assert got["planes_u"].shape == (videos, 4, canvas[0] // 2, canvas[1] // 2)
        assert got["crop_box"].shape == (videos, samples, 4) and got["crop_flip"].shape == (videos, samples)
        assert set(got) - set(pixels.PLANE_KEYS) == set(want) - {"video"}
        for key in set(want) - {"video"}:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        clips = np.asarray(_device_crops({key: got[key] for key in pixels.PLANE_KEYS}, size=32))
        assert clips.shape == want["video"].shape == (8, 4, 32, 32, 3)
        for row in range(8):
            assert _psnr(np.round(clips[row]), want["video"][row]) >= 40, row


def test_device_pixels_say_when_the_clips_cannot_take_them(library):
    embedded = tiny_config()
    embedded.data.pixels = "device"
    with pytest.raises(config_lib.ConfigError, match="config.data.pixels='device' cannot cut these training clips: "
                       "config.data.source='synthetic' holds decoded pixels, not video files. Use "
                       "--config.data.pixels=host"):
        pipeline.check_data_config(embedded)
    erasing = config_for("csv", library, pixels="device", erase_prob=0.25)
    assert any("random erasing (config.data.erase_prob) works on the RGB crops on the host" in p
               for p in pipeline.data_config_problems(erasing))
    erasing.data.pixels = "auto"  # auto falls back to the host wherever the device path cannot go
    assert pipeline.resolve_pixels(erasing.data, "train", backend="gpu") == "host"
    files = config_for("csv", library, pixels="auto")
    assert [pipeline.resolve_pixels(files.data, "train", backend=b) for b in ("cpu", "gpu", "tpu")] == [
        "host", "device", "device"]
    assert pipeline.resolve_pixels(files.data, "eval", backend="gpu") == "host"
    files.data.pixels = "gpu"
    assert "config.data.pixels='gpu': one of auto, host, device." in pipeline.data_config_problems(files)
    shared = config_for("csv", library, batch_size=12, num_samples=4, pixels="device")
    problems = pipeline.batch_size_problems(shared, 1, 4, pads_eval=True)
    assert problems == ["With device pixels each video's planes are one batch row: config.batch_size=12 / "
                        "num_samples=4 = 3 videos must divide over the 4 devices: use a multiple of 4, e.g. "
                        "--config.batch_size=12, or --config.data.pixels=host."]


@pytest.mark.slow
def test_device_pixel_training_resumes_exactly_and_8_devices_equal_1(library, tmp_path, capsys):
    """Pre-training from device pixels (the clips cut from the planes in the step): stopped after its step-2
    checkpoint and resumed it gives the uninterrupted run's losses bit for bit, on 8 simulated devices (each
    video's planes on one device) the 1-device losses to 1e-5, and so do 4 micro-batches accumulated (their clips
    cut one micro-batch at a time)."""
    config = tiny_config(batch_size=8, total_steps=4, checkpoint_every=2, keep_checkpoints=5)
    config.data = data_for("csv", library)
    config.data.update(train_crop="multi_scale", pixels="device")
    full, cut, eight = tmp_path / "full", tmp_path / "cut", tmp_path / "eight"
    train.train_and_evaluate(config, str(full), devices=jax.devices()[:1])
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "4")
    assert train.train_and_evaluate(config, str(cut), devices=jax.devices()[:1])["resumed"]
    train.train_and_evaluate(config, str(eight), devices=jax.devices())
    assert len(jax.devices()) == 8
    accumulated = tmp_path / "accumulated"
    config.grad_accum_steps = 4
    train.train_and_evaluate(config, str(accumulated), devices=jax.devices()[:1])
    a, b, c, d = ({r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}
                  for run in (full, cut, eight, accumulated))
    assert sorted(a) == sorted(b) == sorted(c) == sorted(d) == [1, 2, 3, 4]
    assert [a[step] for step in (3, 4)] == [b[step] for step in (3, 4)]
    np.testing.assert_allclose([c[step] for step in a], [a[step] for step in a], rtol=1e-5)
    np.testing.assert_allclose([d[step] for step in a], [a[step] for step in a], rtol=1e-5)


def test_multi_view_eval_cuts_clips_and_crops(library):
    config = config_for("csv", library, batch_size=3, test_num_clips=2, test_num_crops=3, sampling_rate=1)
    source, batches = read(config, "eval")
    video = np.concatenate([b["video"] for b in batches])
    assert video.shape == (9, 6, 4, 32, 32, 3)  # videos, clips x crops, T, H, W, 3
    first = levels(video)[:, :, 0]
    # Two 4-frame windows spanning the 12 frames: frames 0-3 and 8-11; 3 crops of each.
    np.testing.assert_allclose(first[:, :3], 20, atol=3)
    np.testing.assert_allclose(first[:, 3:], 20 + STEP * 8, atol=3)
    # Landscape videos: 3 crops along the width, which differ in the textured band at the bottom.
    landscape = [row for row, i in enumerate(np.concatenate([b["index"] for b in batches]))
                 if not source[i]["path"].endswith(".mkv")]
    crops = video[landscape, :3, 0, -4:]
    assert len(landscape) == 6
    assert not np.array_equal(crops[:, 0], crops[:, 1]) and not np.array_equal(crops[:, 1], crops[:, 2])


def test_training_on_files_replaces_and_counts_a_corrupt_video(library, tmp_path, capsys, caplog):
    """A truncated file among the videos: training runs its steps, and the replacement is in metrics.jsonl."""
    videos = tmp_path / "videos"
    shutil.copytree(library / "videos", videos, symlinks=True)
    broken = videos / "run" / "broken.mp4"
    broken.write_bytes((videos / "run" / "run_0.mp4").read_bytes()[:400])
    listing = tmp_path / "list.txt"
    listing.write_text((library / "list.txt").read_text() + "run/broken.mp4 1\n")
    config = tiny_config(batch_size=2, total_steps=6, checkpoint_every=6)  # 12 clips: the whole first epoch
    config.data = config_lib.data_config(source="csv", train_csv=str(listing), eval_csv=str(library / "list.txt"),
                                         root=str(videos), num_frames=4, image_size=32, sampling_rate=2,
                                         num_classes=3, train_crop="multi_scale")
    result = train.train_and_evaluate(config, str(tmp_path / "work"), devices=jax.devices()[:1])
    assert result["step"] == 6 and np.isfinite(result["eval_loss"])
    rows = [r for r in read_metrics(tmp_path / "work") if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 7))
    counts = [r["decode_failures"] for r in rows]
    assert counts == sorted(counts) and counts[-1] == 1  # cumulative: the broken video once in the epoch
    out = capsys.readouterr().out
    assert "1 videos failed to decode" in out and "broken.mp4" in caplog.text


@pytest.mark.slow
def test_repeated_sampling_run_resumes_exactly(library, tmp_path, capsys):
    """Pre-training on files with four clips cut from each decode (VideoMAE V2's num_sample 4), through grain
    workers and the prefetch thread: stopped after its step-3 checkpoint and resumed, it gives the uninterrupted
    run's losses bit for bit."""
    config = tiny_config(batch_size=8, total_steps=6, checkpoint_every=3, keep_checkpoints=5)
    config.data = data_for("csv", library)
    config.data.update(num_samples=4, train_crop="multi_scale", num_workers=1, prefetch=2)
    devices = jax.devices()[:1]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.train_and_evaluate(config, str(full), devices=devices)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "6")
    capsys.readouterr()
    assert train.train_and_evaluate(config, str(cut), devices=devices)["resumed"]
    assert "Resuming from checkpoint at step 3" in capsys.readouterr().out
    a = {r["step"]: r["loss"] for r in read_metrics(full) if r["split"] == "train"}
    b = {r["step"]: r["loss"] for r in read_metrics(cut) if r["split"] == "train"}
    assert sorted(b) == list(range(1, 7))
    assert [a[step] for step in range(4, 7)] == [b[step] for step in range(4, 7)]


@pytest.mark.slow
def test_fine_tuning_on_a_folder_with_multi_view_eval(library, tmp_path):
    config = tiny_config(task="classification", batch_size=3, total_steps=3, checkpoint_every=3)
    config.model.update(head="classification", num_classes=3)
    config.data = data_for("folder", library)
    config.data.update(train_crop="random_resized", rand_augment="rand-m7-n4-mstd0.5-inc1", erase_prob=0.25,
                       num_samples=3, test_num_clips=2, test_num_crops=3)
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert 0.0 <= result["eval_top1"] <= 1.0 and np.isfinite(result["eval_loss"])
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "eval"] == [3]


def test_source_errors_name_the_setting(library, tmp_path):
    config = config_for("folder", library)
    config.data.num_classes = 5
    with pytest.raises(config_lib.ConfigError, match=r"3 class folders \(jump, run, walk\) but config.data."
                                                     r"num_classes=5; set --config.data.num_classes=3"):
        pipeline.make_source(config.data, "train")
    listing = tmp_path / "list.txt"
    listing.write_text("jump/jump_0.mp4 0\nnope/a.mp4 1\nnope/b.mp4 2\n")
    config = config_for("csv", library, train_csv=str(listing))
    with pytest.raises(config_lib.ConfigError, match=r"2 of 3 videos .* do not exist.*nope/a\.mp4.*data\.train_csv"):
        pipeline.make_source(config.data, "train")
    config.data.skip_missing = True
    assert len(pipeline.make_source(config.data, "train")) == 1
    listing.write_text("jump/jump_0.mp4 0\nrun/run_0.mp4 7\n")
    config.data.skip_missing = False
    with pytest.raises(config_lib.ConfigError, match=r"list\.txt:2.*7"):
        pipeline.make_source(config.data, "train")
    assert isinstance(pipeline.make_source(config_for("array_record", library).data, "eval"),
                      sources.ArrayRecordVideoSource)
