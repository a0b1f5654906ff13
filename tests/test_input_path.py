"""The training input path's faster parts (issue 37): crop-first decoding, repeated sampling from one decode, and
the data benchmark of the whole path. The decoded frames themselves are tested in test_decode.py and
test_decode_skip.py; here, what is cut from them."""

import numpy as np
import pytest
from helpers import input_spec
from PIL import Image
from test_decode import make_video

from vidjax import config_lib
from vidjax.commands import data_bench
from vidjax.data import decode, pipeline, sources, transforms
from vidjax.data.decode import read_clip
from vidjax.patches import MaskSpec


def texture_frames(num_frames=24, h=48, w=64, seed=0):
    """A smooth random texture panned one pixel a frame: every crop shows detail, and frames differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4, (w + num_frames) // 4 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((4 * coarse.shape[1], 4 * coarse.shape[0]),
                                                    Image.Resampling.BICUBIC))
    return np.stack([big[:h, t : t + w] for t in range(num_frames)])


# (file name, make_video keyword arguments, crop-first path taken): the fast path cuts 8-bit 4:2:0 planes (turned
# upright where the file is rotated); other formats fall back to converting whole frames.
FILES = {
    "bframes.mp4": (dict(options={"crf": "18", "bf": "3"}, gop=8), True),
    "vp9.webm": (dict(codec="libvpx-vp9", options={"lossless": "1"}), True),
    "mjpeg.avi": (dict(codec="mjpeg", options={"q": "2"}), True),  # yuvj420p: full range
    "odd444.mp4": (dict(options={"qp": "0"}, pix_fmt="yuv444p", frames=texture_frames(h=33, w=47)), False),
    "portrait.mp4": (dict(options={"qp": "0"}, rotation=90), True),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input_path")
    out = {}
    for name, (kwargs, _) in FILES.items():
        kwargs = dict(kwargs)
        frames = kwargs.pop("frames", texture_frames())
        out[name] = make_video(folder / name, frames=frames, num_frames=len(frames), **kwargs)
    return out


def one_resample(frames: np.ndarray, crop: transforms.Crop, height: int, width: int) -> np.ndarray:
    """The crop's box, at its fractional place in full-size frames, resampled once by PIL (then flipped)."""
    sy, sx = frames.shape[1] / height, frames.shape[2] / width
    box = (crop.left * sx, crop.top * sy, (crop.left + crop.width) * sx, (crop.top + crop.height) * sy)
    out = np.stack([np.asarray(Image.fromarray(f).resize((crop.out_width, crop.out_height),
                                                         Image.Resampling.BILINEAR, box=box)) for f in frames])
    return out[:, :, ::-1] if crop.flip else out


@pytest.mark.parametrize("name", FILES)
def test_crop_first_resamples_the_decoded_picture_once(videos, name):
    path, fast = videos[name], FILES[name][1]
    full = read_clip(path, 4, 3, np.random.default_rng(1)).frames
    resized = read_clip(path, 4, 3, np.random.default_rng(1), short_side=40).frames
    height, width = resized.shape[1:3]
    rng = np.random.default_rng(7)
    crops = [transforms.train_crop("multi_scale", height, width, 32, rng) for _ in range(3)]
    crops += [transforms.Crop(3, 5, 30, 31, 32, 32, flip=True), transforms.Crop(0, 0, height, width, 32, 32)]
    seen = []

    def make(h, w):
        seen.append((h, w))
        return crops

    clip = read_clip(path, 4, 3, np.random.default_rng(1), short_side=40, crops=make)
    assert seen == [(height, width)]  # asked once, with the resized frames' size
    np.testing.assert_array_equal(clip.indices, read_clip(path, 4, 3, np.random.default_rng(1)).indices)
    assert clip.frames.shape == (len(crops), 4, 32, 32, 3)
    for crop, got in zip(crops, clip.frames, strict=True):
        if fast:
            # One resample of the full decoded frames, up to rounding of the box's position.
            diff = np.abs(got.astype(int) - one_resample(full, crop, height, width))
            assert diff.max() <= 1 and diff.mean() < 0.05, (crop, diff.max(), diff.mean())
        else:
            # The fallback: today's path, resized frames cropped by transforms.apply_crop.
            np.testing.assert_array_equal(got, transforms.apply_crop(resized, crop))


@pytest.mark.parametrize("name", FILES)
def test_crop_first_without_resampling_is_byte_identical(videos, name):
    full = read_clip(videos[name], 4, 3, np.random.default_rng(2)).frames
    h, w = full.shape[1:3]
    for flip in (False, True):
        crop = transforms.Crop(2, 4, h - 10, w - 12, h - 10, w - 12, flip=flip)
        clip = read_clip(videos[name], 4, 3, np.random.default_rng(2), crops=lambda *_, c=crop: [c]).frames[0]
        expected = full[:, 2 : h - 8, 4 : w - 8]
        np.testing.assert_array_equal(clip, expected[:, :, ::-1] if flip else expected)


def test_a_crop_outside_the_frames_is_an_error(videos):
    with pytest.raises(ValueError, match="does not fit"):
        read_clip(videos["bframes.mp4"], 4, 3, short_side=40,
                  crops=lambda h, w: [transforms.Crop(0, w - 10, 20, 20, 20, 20)])


def test_train_crop_draws_as_the_crop_functions(videos):
    """`train_crop` + `apply_crop` give each crop function's clip and leave the generator where it leaves it."""
    video = read_clip(videos["bframes.mp4"], 4, 3, short_side=40).frames
    for kind, fn in (("random", transforms.random_crop), ("multi_scale", transforms.multi_scale_crop),
                     ("random_resized", transforms.random_resized_crop)):
        for seed in range(4):
            a, b = np.random.default_rng(seed), np.random.default_rng(seed)
            got = transforms.apply_crop(video, transforms.train_crop(kind, *video.shape[1:3], 32, a))
            np.testing.assert_array_equal(got, transforms.random_flip(fn(video, 32, b), b))
            assert a.random() == b.random()
    with pytest.raises(ValueError, match="unknown training crop"):
        transforms.train_crop("centre", 40, 50, 32, np.random.default_rng(0))


def file_config(tmp_path, paths, num_samples=1, **data):
    config = config_lib.load_config_file("configs/videomae_k400.py", "runlocal")
    config = data_bench.path_config(config, paths, str(tmp_path), num_samples=num_samples, workers=0,
                               batch=4 * num_samples)
    with config.unlocked():
        config.data.update(train_crop="multi_scale", sampling_rate=2, short_side=40, **data)
    return config


def preprocess(config, source):
    return pipeline.Preprocess(data=config.data, source=source, train=True, pixel_mean=(0.5,) * 3,
                               pixel_std=(0.25,) * 3, masks=MaskSpec((4, 4, 4), 0.75))


def test_training_clip_is_cut_crop_first_with_the_same_draws(tmp_path, videos):
    """A training element's box, flip and mask are the ones decode-then-crop draws; its pixels are one resample
    of the decoded frames."""
    config = file_config(tmp_path, [videos["bframes.mp4"]])
    source = sources.CsvVideoSource(config.data.train_csv)
    d = config.data
    for seed in range(3):
        out = preprocess(config, source)(source[0], np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        resized = read_clip(videos["bframes.mp4"], d.num_frames, d.sampling_rate, rng, short_side=d.short_side)
        crop = transforms.train_crop("multi_scale", *resized.frames.shape[1:3], d.image_size, rng,
                                     scales=tuple(d.crop_scales), flip=d.flip)
        mask = pipeline.tube_mask(rng, (4, 4, 4), 0.75)
        full = read_clip(videos["bframes.mp4"], d.num_frames, d.sampling_rate, np.random.default_rng(seed)).frames
        diff = np.abs(out["video"].astype(int) - one_resample(full, crop, *resized.frames.shape[1:3]))
        assert out["video"].shape == (d.num_frames, d.image_size, d.image_size, 3)
        assert diff.max() <= 1 and diff.mean() < 0.05
        np.testing.assert_array_equal(out["mask"], mask)


def test_repeated_samples_share_one_decode_and_differ(tmp_path, videos, monkeypatch):
    config = file_config(tmp_path, [videos["bframes.mp4"], videos["vp9.webm"]], num_samples=4)
    source = sources.CsvVideoSource(config.data.train_csv)
    decodes = []
    real = decode.read_clip

    def counting(*args, **kwargs):
        clip = real(*args, **kwargs)
        decodes.append(clip.num_decoded)
        return clip

    monkeypatch.setattr(decode, "read_clip", counting)
    out = preprocess(config, source)(source[1], np.random.default_rng(3))
    assert len(decodes) == 1  # one decode for the four clips
    assert out["video"].shape == (4, config.data.num_frames, 32, 32, 3)
    assert out["mask"].shape == (4, 64) and out["decode_failures"].shape == (4,)
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(out["video"][i], out["video"][j])  # crop or flip differ
            assert not np.array_equal(out["mask"][i], out["mask"][j])
    # The samples are those of the per-sample generators decode-then-crop seeds (transforms.repeated_augment's).
    rng = np.random.default_rng(3)
    resized = real(videos["vp9.webm"], config.data.num_frames, 2, rng, short_side=config.data.short_side).frames
    seeds = rng.integers(0, 2**63 - 1, size=4)
    for clip, seed in zip(out["video"], seeds, strict=True):
        crop = transforms.train_crop("multi_scale", *resized.shape[1:3], 32, np.random.default_rng(int(seed)),
                                     scales=tuple(config.data.crop_scales), flip=True)
        assert np.abs(clip.astype(int) - transforms.apply_crop(resized, crop)).mean() < 12  # the same place


def test_repeated_sampling_resumes_exactly(tmp_path, videos):
    paths = [videos[name] for name in ("bframes.mp4", "vp9.webm", "mjpeg.avi")]
    config = file_config(tmp_path, paths, num_samples=4)
    source = sources.CsvVideoSource(config.data.train_csv)
    spec = input_spec(config)
    dataset = pipeline.make_dataset(config, "train", source, spec)
    iterator = iter(dataset)
    for _ in range(2):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    resumed = iter(pipeline.make_dataset(config, "train", source, spec))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got["video"].shape == (16, config.data.num_frames, 32, 32, 3)  # 4 videos x 4 clips as rows
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# The data benchmark's figures are rounded to 2 decimals (`data_bench.run_path`): each is within this of its value.
ROUNDING = 0.005


def assert_rounded_quotient(got: float, numerator: float, denominator: float, exact_numerator: bool = False):
    """`got`, a quotient rounded to 2 decimals, is what the rounded `numerator` / `denominator` allow: the bound
    follows the rounding of all three, so a small quotient (a slow round on a busy machine) is not held to a relative
    tolerance its rounding alone exceeds (issue 72: 1 failure in 1,832 tests)."""
    e = 0.0 if exact_numerator else ROUNDING
    low = (numerator - e) / (denominator + ROUNDING) - ROUNDING
    high = (numerator + e) / (denominator - ROUNDING) + ROUNDING
    assert low <= got <= high, (got, numerator, denominator)


def test_rounded_quotients_are_bounded_by_their_rounding():
    """Clips/s of 0.124 and 0.496 (a busy machine) are reported as 0.12 and 0.5 and their quotient 0.25 as 0.25: 4%
    from 0.12 / 0.5, which a 2% tolerance refused; the rounding's own bound takes it, and still refuses 0.30."""
    assert round(0.124 / 0.496, 2) == 0.25 and abs(0.25 / (0.12 / 0.5) - 1) > 0.02
    assert_rounded_quotient(0.25, 0.12, 0.5)
    with pytest.raises(AssertionError):
        assert_rounded_quotient(0.30, 0.12, 0.5)


def test_data_bench_times_the_whole_path_against_decord(tmp_path):
    folder = str(tmp_path / "bench")
    paths = data_bench.make_videos(folder, 2, seconds=1.0, fps=15, width=64, height=48, gop=5)
    config = config_lib.load_config_file("configs/videomae_k400.py", "runlocal")
    with config.unlocked():
        config.data.update(sampling_rate=1, train_crop="multi_scale")
    logged = []
    result = data_bench.run_path(config, paths, folder, loaders=["vidjax", "vidjax_device", "decord"],
                                 num_samples=[1, 2], workers=[0], batch=16, clips=16, rounds=1,
                                 log=logged.append)  # 8 devices in the suite: 8 videos a batch at num_samples 2
    rows = {(row["loader"], row["num_samples"]): row for row in result["rows"]}
    assert result["recipe"]["masks"] and result["recipe"]["crop"] == 32
    for k in (1, 2):
        row = rows["vidjax", k]
        assert row["clips_per_s"] > 0 and row["cpu_ms_per_clip"] > 0 and row["cores_used"] > 0
        assert_rounded_quotient(row["clips_per_s_per_core"], 1000, row["cpu_ms_per_clip"], exact_numerator=True)
    for k in (1, 2):  # the device-pixel path: the planes of each video's crops, and the step's share timed
        row = rows["vidjax_device", k]
        assert row["clips_per_s"] > 0 and row["device_ms_per_clip"] > 0
        assert abs(row["device_ms_per_batch"] - 16 * row["device_ms_per_clip"]) <= ROUNDING * (1 + 16)
        assert_rounded_quotient(row["vidjax_speedup"], rows["vidjax", k]["clips_per_s"], row["clips_per_s"])
        assert "device_ms_per_clip" not in rows["vidjax", k]
    frames = config.data.num_frames
    assert rows["vidjax", 1]["bytes_per_clip"] > frames * 32 * 32 * 3  # RGB clips, and their labels and masks
    # One video's planes (a 64 x 64 canvas at k = 1; 64 x 114 shared by its two crops at k = 2), 1.5 bytes a pixel.
    planes = {1: frames * 64 * 64 * 1.5, 2: frames * 64 * 114 * 1.5 / 2}
    for k in (1, 2):
        assert 0 < rows["vidjax_device", k]["bytes_per_clip"] - planes[k] < 1024
    if "decord" in result["missing"]:  # not installable on this platform: said, with the command
        assert "pip install decord" in result["missing"]["decord"]
    else:
        for k in (1, 2):
            assert_rounded_quotient(rows["decord", k]["vidjax_speedup"], rows["vidjax", k]["clips_per_s"],
                                    rows["decord", k]["clips_per_s"])
    assert "vidjax" in data_bench.format_path_table(result)
    with pytest.raises(ValueError, match="unknown loader"):
        data_bench.run_path(config, paths, folder, loaders=["ffcv"], num_samples=[1], workers=[0], batch=4, clips=4,
                       rounds=1)
