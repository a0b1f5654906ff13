"""Tests for vidjax.data.decode and vidjax.data.transforms on small videos written with PyAV."""

import logging
import pickle

import av
import numpy as np
import pytest

from vidjax.data import transforms
from vidjax.data.decode import VideoDecodeError, decode_clip, sample_indices

H, W = 48, 64
LEVEL_STEP = 5  # frame i is grey level LEVEL_STEP * i, so decoded levels reveal frame indices
NOISE_ROWS = 16  # optional random band at the bottom, to make files large enough to truncate


def make_video(
    path,
    num_frames=40,
    codec="libx264",
    options=None,
    container_options=None,
    audio=False,
    noise=False,
):
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            image = np.full((H, W, 3), LEVEL_STEP * i, np.uint8)
            if noise:
                image[-NOISE_ROWS:] = rng.integers(0, 256, (NOISE_ROWS, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            if audio_stream is not None:
                samples = av.AudioFrame.from_ndarray(
                    np.zeros((2, 640), np.float32), format="fltp", layout="stereo"
                )
                samples.sample_rate = 16000
                for packet in audio_stream.encode(samples):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            for packet in audio_stream.encode():
                container.mux(packet)
    return str(path)


def lossless_mp4(path, **kwargs):
    return make_video(path, codec="libx264", options={"qp": "0"}, **kwargs)


def frame_indices(clip):
    """Recovers source frame indices from the grey level of the (noise-free) top rows."""
    levels = clip[:, : H - NOISE_ROWS].reshape(len(clip), -1).mean(axis=1)
    indices = np.round(levels / LEVEL_STEP).astype(int)
    np.testing.assert_allclose(levels, LEVEL_STEP * indices, atol=2)
    return indices


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return lossless_mp4(tmp_path_factory.mktemp("videos") / "clip.mp4")


# --- sample_indices ---------------------------------------------------------------------------


def test_sample_indices_eval_is_centred():
    np.testing.assert_array_equal(sample_indices(40, 4, 5, None), [10, 15, 20, 25])
    np.testing.assert_array_equal(sample_indices(41, 4, 5, None), [10, 15, 20, 25])


def test_sample_indices_train_random_window_stays_in_range():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        indices = sample_indices(40, 4, 5, rng)
        assert indices.min() >= 0 and indices.max() <= 39
        np.testing.assert_array_equal(np.diff(indices), 5)
        starts.add(int(indices[0]))
    # Window of 20 in 40 frames: every start in [0, 20] is possible, nothing beyond.
    assert starts == set(range(21))


def test_sample_indices_exact_fit_and_short_video_repeat_last_frame():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_indices(20, 4, 5, rng), [0, 5, 10, 15])
    np.testing.assert_array_equal(sample_indices(3, 4, 2, None), [0, 2, 2, 2])
    np.testing.assert_array_equal(sample_indices(3, 4, 2, rng), [0, 2, 2, 2])
    np.testing.assert_array_equal(sample_indices(1, 3, 1, None), [0, 0, 0])


@pytest.mark.parametrize("args", [(0, 4, 2), (10, 0, 2), (10, 4, 0)])
def test_sample_indices_rejects_empty_inputs(args):
    with pytest.raises(ValueError):
        sample_indices(*args, None)


# --- decode_clip ------------------------------------------------------------------------------


def test_decode_mp4_eval_centred(mp4):
    clip = decode_clip(mp4, num_frames=8, sampling_rate=4)
    assert clip.shape == (8, H, W, 3) and clip.dtype == np.uint8
    # Window of 32 in 40 frames, centred: start 4.
    np.testing.assert_array_equal(frame_indices(clip), 4 + 4 * np.arange(8))


def test_decode_mp4_train_random_windows(mp4):
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(6):
        indices = frame_indices(decode_clip(mp4, 4, 8, rng))
        np.testing.assert_array_equal(np.diff(indices), 8)
        assert 0 <= indices[0] <= 8
        starts.add(int(indices[0]))
    assert len(starts) > 1


@pytest.mark.parametrize(
    "name, codec, options",
    [("clip.mkv", "libx264", {"qp": "0"}), ("clip.avi", "mjpeg", {"q": "1"})],
)
def test_decode_other_containers(tmp_path, name, codec, options):
    path = make_video(tmp_path / name, codec=codec, options=options)
    clip = decode_clip(path, 8, 4)
    assert clip.shape == (8, H, W, 3)
    np.testing.assert_array_equal(frame_indices(clip), 4 + 4 * np.arange(8))


def test_decode_ignores_audio(tmp_path):
    path = lossless_mp4(tmp_path / "with_audio.mp4", audio=True)
    with av.open(path) as container:
        assert container.streams.audio
    np.testing.assert_array_equal(frame_indices(decode_clip(path, 4, 2)), [16, 18, 20, 22])


def test_decode_short_video_repeats_last_frame(tmp_path):
    path = lossless_mp4(tmp_path / "short.mp4", num_frames=3)
    clip = decode_clip(path, 4, 2, np.random.default_rng(0))
    assert clip.shape == (4, H, W, 3)
    np.testing.assert_array_equal(frame_indices(clip), [0, 2, 2, 2])


def test_decode_header_overstating_frames_resamples(tmp_path, caplog):
    # moov first (faststart) keeps the header's 40-frame count while the data is cut short.
    path = make_video(
        tmp_path / "cut.mp4",
        codec="mpeg4",
        options={"qscale": "1"},
        container_options={"movflags": "faststart"},
        noise=True,
    )
    cut = str(tmp_path / "cut_half.mp4")
    with open(path, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with av.open(cut) as container:
        assert container.streams.video[0].frames == 40
        decodable = sum(1 for _ in container.decode(video=0))
    assert 0 < decodable < 32

    with caplog.at_level(logging.WARNING):
        clip = decode_clip(cut, 4, 8)
    assert clip.shape == (4, H, W, 3)
    assert "only" in caplog.text and cut in caplog.text
    levels = clip[:, : H - NOISE_ROWS].reshape(4, -1).mean(axis=1)
    # mpeg4 is lossy: allow a few grey levels of error.
    expected = LEVEL_STEP * sample_indices(decodable, 4, 8, None)
    np.testing.assert_allclose(levels, expected, atol=LEVEL_STEP)


def test_decode_errors_name_the_file(tmp_path, mp4):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="missing.mp4.*does not exist"):
        decode_clip(missing, 4, 2)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video " * 100)
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        decode_clip(garbage, 4, 2)

    # Without faststart the index sits at the end, so a truncated mp4 cannot be opened.
    truncated = tmp_path / "truncated.mp4"
    with open(mp4, "rb") as f:
        truncated.write_bytes(f.read()[:-200])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        decode_clip(truncated, 4, 2)

    audio_only = str(tmp_path / "audio_only.m4a")
    with av.open(audio_only, "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        samples.sample_rate = 16000
        for packet in [*stream.encode(samples), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        decode_clip(audio_only, 4, 2)


def test_video_decode_error_is_value_error_and_pickles():
    error = VideoDecodeError("/data/a.mp4", "file does not exist")
    assert isinstance(error, ValueError)
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.path, restored.reason, str(restored)) == (error.path, error.reason, str(error))


# --- transforms -------------------------------------------------------------------------------


def gradient_video(t=2, h=H, w=W):
    """Pixel values that identify their position, to check which window a crop took."""
    rows, cols = np.meshgrid(np.arange(h) * 4, np.arange(w) * 3, indexing="ij")
    video = np.stack([rows, cols, np.full_like(rows, 9)], axis=-1)
    return np.broadcast_to(video, (t, h, w, 3)).astype(np.uint8)


def test_resize_short_side():
    video = np.full((2, H, W, 3), 77, np.uint8)
    small = transforms.resize_short_side(video, 24)
    assert small.shape == (2, 24, 32, 3) and small.dtype == np.uint8
    assert np.all(small == 77)
    assert transforms.resize_short_side(video.transpose(0, 2, 1, 3), 24).shape == (2, 32, 24, 3)
    assert transforms.resize_short_side(video, 96).shape == (2, 96, 128, 3)
    assert transforms.resize_short_side(video, H) is video


def test_crops():
    video = gradient_video()
    np.testing.assert_array_equal(transforms.center_crop(video, 32), video[:, 8:40, 16:48])
    np.testing.assert_array_equal(transforms.center_crop(video, (16, 20)), video[:, 16:32, 22:42])

    rng = np.random.default_rng(0)
    tops = set()
    for _ in range(20):
        crop = transforms.random_crop(video, 32, rng)
        assert crop.shape == (2, 32, 32, 3)
        # Find the window from the top-left pixel and check the whole crop is that window.
        top, left = crop[0, 0, 0, 0] // 4, crop[0, 0, 0, 1] // 3
        np.testing.assert_array_equal(crop, video[:, top : top + 32, left : left + 32])
        tops.add(int(top))
    assert len(tops) > 1

    with pytest.raises(ValueError, match="larger than"):
        transforms.center_crop(video, 64)
    with pytest.raises(ValueError, match="larger than"):
        transforms.random_crop(video, (49, 10), rng)


def test_random_flip():
    video = gradient_video()
    rng = np.random.default_rng(0)
    outcomes = [transforms.random_flip(video, rng) for _ in range(20)]
    flipped = [np.array_equal(out, video[:, :, ::-1]) for out in outcomes]
    kept = [np.array_equal(out, video) for out in outcomes]
    assert all(f != k for f, k in zip(flipped, kept, strict=False))
    assert any(flipped) and any(kept)

