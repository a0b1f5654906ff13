"""Tests for vidjax.data.decode and vidjax.data.transforms on small videos written with PyAV."""

import logging
import os
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import ContainerProxy

from vidjax.data import decode, transforms
from vidjax.data.decode import VideoDecodeError, decode_clip, probe, read_clip, sample_indices

H, W = 48, 64
LEVEL_STEP = 5  # frame i is grey level LEVEL_STEP * i, so decoded levels reveal frame indices
NOISE_ROWS = 16  # optional random band at the bottom: makes the encoder work, and files large enough to truncate


def grey_frames(num_frames=40, h=H, w=W, noise=False):
    """Frame i is grey level LEVEL_STEP * i (with a random band in the bottom NOISE_ROWS rows if `noise`)."""
    frames = np.repeat((LEVEL_STEP * np.arange(num_frames, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (num_frames, h, w, 3)).copy()
    if noise:
        rng = np.random.default_rng(0)
        frames[:, -NOISE_ROWS:] = rng.integers(0, 256, (num_frames, NOISE_ROWS, w, 3), dtype=np.uint8)
    return frames


def make_video(
    path,
    num_frames=40,
    codec="libx264",
    options=None,
    container_options=None,
    audio=False,
    noise=False,
    frames=None,
    pix_fmt=None,
    rate=25,
    gop=None,
    rotation=None,
    pts_ms=None,
    audio_seconds=None,
):
    """Writes `frames` (default `grey_frames(num_frames, noise=noise)`) with PyAV; `pts_ms` gives each frame's
    timestamp in milliseconds (variable frame rate), `rotation` the display rotation (degrees
    counter-clockwise), `audio` adds an AAC (mp4) or Opus (mkv/webm) track of the video's length or
    `audio_seconds`."""
    frames = grey_frames(num_frames, noise=noise) if frames is None else frames
    pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        audio_stream = None
        if audio:
            audio_codec = "aac" if str(path).endswith((".mp4", ".mov")) else "libopus"
            audio_stream = container.add_stream(audio_codec, rate=48000 if audio_codec == "libopus" else 16000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            seconds = audio_seconds or len(frames) / rate
            chunk = 960 if audio_stream.codec_context.name == "libopus" else 1024
            for start in range(0, int(seconds * audio_stream.rate), chunk):
                samples = av.AudioFrame.from_ndarray(np.zeros((2, chunk), np.float32), format="fltp",
                                                     layout="stereo")
                samples.sample_rate, samples.pts = audio_stream.rate, start
                for packet in audio_stream.encode(samples):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return str(path)


def lossless_mp4(path, **kwargs):
    return make_video(path, codec="libx264", options={"qp": "0"}, **kwargs)


def frame_indices(clip, atol=2):
    """Recovers source frame indices from the grey level of the (noise-free) top rows."""
    levels = clip[:, : clip.shape[1] - NOISE_ROWS].reshape(len(clip), -1).mean(axis=1)
    indices = np.round(levels / LEVEL_STEP).astype(int)
    np.testing.assert_allclose(levels, LEVEL_STEP * indices, atol=atol)
    return indices


def decode_all(path):
    """Reference: every frame, decoded in order from the start, as RGB."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return lossless_mp4(tmp_path_factory.mktemp("videos") / "clip.mp4")


# --- sample_indices ---------------------------------------------------------------------------


def test_sample_indices_eval_is_centred():
    np.testing.assert_array_equal(sample_indices(40, 4, 5, None), [10, 15, 20, 25])
    np.testing.assert_array_equal(sample_indices(41, 4, 5, None), [10, 15, 20, 25])
    np.testing.assert_array_equal(sample_indices(40, 4, 5, None, num_windows=1, window_index=0), [10, 15, 20, 25])


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


def test_sample_indices_evenly_spaced_test_windows():
    # Window 16 in 40 frames: 3 windows start at 0, 12 and 24 (the last ends on the last frame).
    starts = [sample_indices(40, 4, 4, None, num_windows=3, window_index=i)[0] for i in range(3)]
    assert starts == [0, 12, 24]
    assert sample_indices(40, 4, 4, None, num_windows=3, window_index=2)[-1] == 36
    # Short video: every window is the whole (padded) video.
    for i in range(2):
        np.testing.assert_array_equal(sample_indices(5, 4, 2, None, num_windows=2, window_index=i), [0, 2, 4, 4])
    with pytest.raises(ValueError, match="window_index"):
        sample_indices(40, 4, 4, None, num_windows=3, window_index=3)


def test_sample_indices_exact_fit_and_short_video_repeat_last_frame():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_indices(20, 4, 5, rng), [0, 5, 10, 15])
    np.testing.assert_array_equal(sample_indices(3, 4, 2, None), [0, 2, 2, 2])
    np.testing.assert_array_equal(sample_indices(3, 4, 2, rng), [0, 2, 2, 2])
    np.testing.assert_array_equal(sample_indices(1, 3, 1, None), [0, 0, 0])


@pytest.mark.parametrize("args", [(0, 4, 2), (10, 0, 2), (10, 4, -1)])  # sampling_rate 0 spreads the frames
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
    [
        ("clip.mkv", "libx264", {"qp": "0"}),
        ("clip.mov", "libx264", {"qp": "0"}),
        ("clip.webm", "libvpx-vp9", {"lossless": "1"}),
        ("clip_vp8.webm", "libvpx", {"crf": "4", "b": "2M"}),
        ("clip.avi", "mjpeg", {"q": "1"}),
        ("clip_mpeg4.avi", "mpeg4", {"qscale": "1"}),
        ("clip_mpeg4.mp4", "mpeg4", {"qscale": "1"}),
    ],
)
def test_decode_containers_and_codecs(tmp_path, name, codec, options):
    path = make_video(tmp_path / name, codec=codec, options=options)
    clip = read_clip(path, 8, 4)
    assert clip.frames.shape == (8, H, W, 3)
    np.testing.assert_array_equal(clip.indices, 4 + 4 * np.arange(8))
    np.testing.assert_array_equal(clip.frames, decode_all(path)[clip.indices])
    if codec != "mpeg4":  # mpeg4 quantises flat grey too coarsely to read the index back from the level
        np.testing.assert_array_equal(frame_indices(clip.frames, atol=3), clip.indices)
    assert (clip.fps, clip.start_s, clip.end_s) == (25.0, 4 / 25, 33 / 25)
    info = probe(path)
    assert (info.num_frames, info.fps, info.duration_s) == (40, 25.0, 1.6)
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.codec == {"libx264": "h264", "libvpx-vp9": "vp9", "libvpx": "vp8"}.get(codec, codec)


@pytest.mark.parametrize(
    "name, codec, options, gop",
    [
        ("bframes.mp4", "libx264", {"crf": "20", "bf": "3"}, 8),
        ("bframes.mkv", "libx264", {"crf": "20", "bf": "3"}, 8),
        ("altref.webm", "libvpx-vp9", {"crf": "30", "b": "0", "auto-alt-ref": "1", "lag-in-frames": "8"}, 8),
        ("mpeg4.avi", "mpeg4", {"qscale": "2"}, 6),
    ],
)
def test_seek_equals_full_decode(tmp_path, name, codec, options, gop):
    """Seeking to the keyframe before a clip gives exactly the frames a decode from the start gives."""
    path = make_video(tmp_path / name, num_frames=50, codec=codec, options=options, gop=gop, noise=True)
    reference = decode_all(path)
    assert len(reference) == 50
    rng = np.random.default_rng(0)
    for _ in range(6):
        clip = read_clip(path, 4, 3, rng)
        np.testing.assert_array_equal(clip.frames, reference[clip.indices])
        if codec != "mpeg4":  # see test_decode_containers_and_codecs
            np.testing.assert_array_equal(frame_indices(clip.frames, atol=4), clip.indices)
        # Decoding starts at most a keyframe interval (plus reordering delay) before the clip's first frame.
        assert clip.num_decoded <= clip.indices[-1] - clip.indices[0] + gop + 4
    late = read_clip(path, 2, 2, start_s=1.6)  # frames 40..49, centred window of 4: 43, 45
    np.testing.assert_array_equal(late.indices, [43, 45])
    np.testing.assert_array_equal(late.frames, reference[[43, 45]])
    assert late.num_decoded < 43


def test_seek_landing_past_the_clip_falls_back_to_decoding_from_the_start(tmp_path, monkeypatch):
    path = make_video(tmp_path / "late.mp4", num_frames=50, options={"qp": "0"}, gop=8)
    open_container = decode._open

    class LateSeeking(ContainerProxy):
        """The real container, except that seeks land on the keyframe after the target (a bad index)."""

        def seek(self, offset, stream=None, backward=True):
            if offset == 0:
                return self.container.seek(0)
            return self.container.seek(offset, stream=stream, backward=False)

    monkeypatch.setattr(decode, "_open", lambda src, label: LateSeeking(open_container(src, label)))
    clip = read_clip(path, 4, 2, start_s=1.0)  # frames 25..49, centred window of 8: 33, 35, 37, 39
    np.testing.assert_array_equal(clip.indices, [33, 35, 37, 39])
    np.testing.assert_array_equal(frame_indices(clip.frames), [33, 35, 37, 39])
    assert clip.num_decoded > 40  # the missed seek's first frame, then frames 0..40 from the start


def test_decode_with_threads_is_identical(tmp_path):
    path = make_video(tmp_path / "t.mp4", num_frames=50, options={"crf": "20"}, gop=8, noise=True)
    one = decode_clip(path, 8, 5, threads=1)
    np.testing.assert_array_equal(decode_clip(path, 8, 5, threads=2), one)


def test_bytes_input_equals_path_input(tmp_path, mp4):
    webm = make_video(tmp_path / "clip.webm", codec="libvpx-vp9", options={"lossless": "1"})
    for path in (mp4, webm):
        with open(path, "rb") as f:
            data = f.read()
        for rng in (None, np.random.default_rng(3)):
            from_path = read_clip(path, 4, 6, None if rng is None else np.random.default_rng(3))
            from_bytes = read_clip(data, 4, 6, rng)
            np.testing.assert_array_equal(from_bytes.frames, from_path.frames)
            np.testing.assert_array_equal(from_bytes.indices, from_path.indices)
        assert probe(data) == probe(path)
    with pytest.raises(VideoDecodeError, match="shard-3/key-17"):
        decode_clip(b"not a video " * 100, 4, 2, name="shard-3/key-17")
    with pytest.raises(VideoDecodeError, match="1200 bytes in memory"):
        decode_clip(b"not a video " * 100, 4, 2)


def test_decode_odd_size(tmp_path):
    # yuv420p needs even sizes in libx264; 4:4:4 takes any size.
    frames = grey_frames(12, h=33, w=47)
    path = make_video(tmp_path / "odd.mp4", frames=frames, options={"qp": "0"}, pix_fmt="yuv444p")
    clip = decode_clip(path, 4, 3)
    assert clip.shape == (4, 33, 47, 3)
    np.testing.assert_array_equal(clip[:, :, :, 0].mean(axis=(1, 2)), LEVEL_STEP * np.arange(0, 12, 3))
    assert (probe(path).width, probe(path).height) == (47, 33)
    # Resizing in the colour conversion gives transforms.resize_short_side's size.
    assert decode_clip(path, 4, 3, short_side=20).shape == transforms.resize_short_side(clip, 20).shape


def marked_frames(num_frames=6):
    """Landscape frames, black with a white top-left block and a grey top-right block (orientation marks)."""
    frames = np.zeros((num_frames, H, W, 3), np.uint8)
    frames[:, :16, :16] = 255
    frames[:, :16, -16:] = 128
    return frames


@pytest.mark.parametrize("name, rotation", [("portrait.mp4", 90), ("portrait.mkv", -90), ("upside.mp4", 180)])
def test_decode_applies_display_rotation(tmp_path, name, rotation):
    frames = marked_frames()
    path = make_video(tmp_path / name, frames=frames, options={"qp": "0"}, rotation=rotation)
    clip = decode_clip(path, 2, 2)
    # PyAV's rotation is counter-clockwise, as np.rot90's.
    upright = np.rot90(frames[0], rotation // 90)
    assert clip.shape[1:] == upright.shape
    np.testing.assert_allclose(clip[0], upright, atol=3)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (rotation, upright.shape[1], upright.shape[0])
    # short_side applies to the displayed (rotated) frames: a portrait video's short side is its width.
    resized = decode_clip(path, 2, 2, short_side=24)
    assert resized.shape[1:3] == transforms.resize_short_side(clip, 24).shape[1:3]


def test_decode_short_side_matches_transforms(mp4):
    clip = decode_clip(mp4, 4, 4)
    expected = transforms.resize_short_side(clip, 36)
    resized = decode_clip(mp4, 4, 4, short_side=36)
    assert resized.shape == expected.shape == (4, 36, 48, 3)
    assert np.abs(resized.astype(int) - expected).mean() < 2


@pytest.mark.parametrize("name", ["with_audio.mp4", "with_audio.mkv"])
def test_decode_ignores_audio(tmp_path, name):
    path = lossless_mp4(tmp_path / name, audio=True)
    with av.open(path) as container:
        assert container.streams.audio
        assert container.streams[0].type == "audio" or container.streams[1].type == "audio"
    np.testing.assert_array_equal(frame_indices(decode_clip(path, 4, 2)), [16, 18, 20, 22])


def test_decode_audio_longer_than_video_in_mkv(tmp_path, caplog):
    # MKV stores no frame count: the estimate comes from the container duration, here the 3 s audio track's,
    # so 75 frames are expected where 40 exist. The clip is resampled from the 40, without a warning.
    path = lossless_mp4(tmp_path / "long_audio.mkv", audio=True, audio_seconds=3.0)
    assert probe(path).num_frames > 60
    with caplog.at_level(logging.WARNING):
        clip = read_clip(path, 4, 8)
    np.testing.assert_array_equal(clip.indices, [4, 12, 20, 28])
    np.testing.assert_array_equal(frame_indices(clip.frames), [4, 12, 20, 28])
    assert not caplog.records


def test_decode_short_video_repeats_last_frame(tmp_path):
    path = lossless_mp4(tmp_path / "short.mp4", num_frames=3)
    for rng in (None, np.random.default_rng(0)):
        clip = read_clip(path, 4, 2, rng)
        assert clip.frames.shape == (4, H, W, 3)
        np.testing.assert_array_equal(clip.indices, [0, 2, 2, 2])
        np.testing.assert_array_equal(frame_indices(clip.frames), [0, 2, 2, 2])
    np.testing.assert_array_equal(frame_indices(decode_clip(path, 5, 1)), [0, 1, 2, 2, 2])


def test_decode_start_end_restriction(mp4):
    # [0.4 s, 1.2 s) at 25 fps is frames 10..29; a centred window of 4 x 2 starts at 10 + 6.
    clip = read_clip(mp4, 4, 2, start_s=0.4, end_s=1.2)
    np.testing.assert_array_equal(frame_indices(clip.frames), [16, 18, 20, 22])
    assert (clip.start_s, clip.end_s) == pytest.approx((0.64, 0.92))
    rng = np.random.default_rng(0)
    for _ in range(8):
        indices = frame_indices(decode_clip(mp4, 4, 2, rng, start_s=0.4, end_s=1.2))
        assert indices[0] >= 10 and indices[-1] <= 29
    # NaN = whole video; a range shorter than the window pads; a start past the end uses the last frame.
    np.testing.assert_array_equal(frame_indices(decode_clip(mp4, 8, 4, start_s=float("nan"), end_s=float("nan"))),
                                  4 + 4 * np.arange(8))
    np.testing.assert_array_equal(frame_indices(decode_clip(mp4, 4, 1, start_s=1.4, end_s=1.5)), [35, 36, 37, 37])
    np.testing.assert_array_equal(frame_indices(decode_clip(mp4, 2, 2, start_s=5.0)), [39, 39])


def test_decode_evenly_spaced_test_windows(mp4):
    clips = [frame_indices(decode_clip(mp4, 4, 4, num_windows=3, window_index=i)) for i in range(3)]
    np.testing.assert_array_equal(clips, [[0, 4, 8, 12], [12, 16, 20, 24], [24, 28, 32, 36]])


def test_decode_variable_frame_rate(tmp_path):
    # 12 frames over 0.6 s (average 20 fps) with a burst and gaps; index k is the frame on screen at k / 20 s.
    pts_ms = [0, 40, 80, 200, 210, 220, 230, 400, 440, 480, 520, 560]
    path = make_video(tmp_path / "vfr.mp4", num_frames=12, options={"qp": "0"}, pts_ms=pts_ms, gop=4)
    info = probe(path)
    assert (info.num_frames, info.fps) == (12, 20.0)
    for indices, rate in (([0, 2, 4, 6], 2), ([3, 5, 7, 9], 2), ([8, 9, 10, 11], 1)):
        expected = [max(i for i, t in enumerate(pts_ms) if t <= 50 * k + 25) for k in indices]
        clip = read_clip(path, 4, rate, start_s=indices[0] / 20, end_s=(indices[-1] + 1) / 20)
        np.testing.assert_array_equal(clip.indices, indices)
        np.testing.assert_array_equal(frame_indices(clip.frames), expected)


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
    # mpeg4 is lossy: allow a few grey levels of error.
    np.testing.assert_array_equal(frame_indices(clip, atol=LEVEL_STEP), sample_indices(decodable, 4, 8, None))


def test_decode_truncated_webm_resamples(tmp_path):
    # WebM needs no index at the end: a cut file opens, and clips come from the frames that remain.
    path = make_video(tmp_path / "cut.webm", codec="libvpx-vp9", options={"lossless": "1"}, noise=True)
    with open(path, "rb") as f:
        data = f.read()
    cut = data[: len(data) // 2]
    with av.open(path) as container:
        total = sum(1 for _ in container.decode(video=0))
    clip = read_clip(cut, 4, 4, np.random.default_rng(0))
    assert clip.indices[-1] < total
    np.testing.assert_array_equal(frame_indices(clip.frames), clip.indices)


def test_decode_errors_name_the_file(tmp_path, mp4):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="missing.mp4.*does not exist"):
        decode_clip(missing, 4, 2)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video " * 100)
    with pytest.raises(VideoDecodeError, match="garbage.mp4.*cannot open"):
        decode_clip(garbage, 4, 2)
    with pytest.raises(VideoDecodeError, match="garbage.mp4.*cannot open"):
        probe(garbage)

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
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe(audio_only)


def test_decode_corrupt_frames_raise_or_decode(tmp_path):
    """Garbage in the middle of the stream either conceals (the decoder's choice) or raises VideoDecodeError,
    never another exception type, so the pipeline can skip the example."""
    path = make_video(tmp_path / "corrupt.avi", codec="mjpeg", options={"q": "1"}, noise=True)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with av.open(path) as container:
        packets = [p for p in container.demux(video=0) if p.size > 0]
    for packet in packets[10:30]:
        data[packet.pos : packet.pos + packet.size] = b"\xff" * packet.size
    try:
        clip = decode_clip(bytes(data), 8, 4)
    except VideoDecodeError as e:
        assert "corrupt" in e.reason or "decode" in e.reason
    else:
        assert clip.shape == (8, H, W, 3)


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



# --- vidjax.data.bench ------------------------------------------------------------------------


def test_bench_times_every_method_and_reuses_videos(tmp_path):
    from vidjax.commands import data_bench

    folder = str(tmp_path / "bench")
    paths = data_bench.make_videos(folder, 2, seconds=2.0, fps=15, width=64, height=48, gop=5)
    mtimes = [os.path.getmtime(p) for p in paths]
    assert data_bench.make_videos(folder, 2, seconds=2.0, fps=15, width=64, height=48, gop=5) == paths
    assert [os.path.getmtime(p) for p in paths] == mtimes  # reused, not re-encoded
    with av.open(paths[0]) as container:
        assert container.streams.video[0].frames == 30

    recipe = data_bench.Recipe(num_frames=4, sampling_rate=2, short_side=32, crop=24)
    result = data_bench.run(paths, recipe, ["naive", "seek", "seek_sws"], workers=[0], clips=3)
    assert set(result["clips_per_s"]) == {"naive", "seek", "seek_sws"}
    assert all(v["0"] > 0 for v in result["clips_per_s"].values())
    assert all(v["0"] > 0 for v in result["cpu_ms_per_clip"].values())
    assert set(result["speedup_vs_naive"]) == {"seek", "seek_sws"}
    # The naive loop decodes all 30 frames; seeking decodes the 7-frame window plus part of a 5-frame GOP.
    assert result["frames_decoded_per_clip"]["naive"] == 30
    assert result["frames_decoded_per_clip"]["seek"] <= 7 + 5 + 2
    table = data_bench.format_table(result)
    assert "seek_sws" in table and "naive" in table
