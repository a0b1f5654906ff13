"""Tests for decoding without the non-reference frames a clip does not use (`read_clip(skip_nonref=True)`): the same
bytes as decoding every frame, on small videos with B-frames written with PyAV."""

import functools
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import ContainerProxy, tiered
from PIL import Image
from test_decode import decode_all, make_video

from vidjax.data import decode
from vidjax.data.decode import VideoDecodeError, read_clip

H, W = 48, 64
NUM_FRAMES = 75  # 3 s at 25 fps


def texture_frames(num_frames=NUM_FRAMES, seed=0):
    """A smooth random texture panned across the frame with a block moving over it (as the data bench's videos):
    motion the encoder predicts with P- and B-frames."""
    rng = np.random.default_rng(seed)
    pad = 16
    coarse = rng.integers(0, 256, ((H + 2 * pad) // 8, (W + 2 * pad) // 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((W + 2 * pad, H + 2 * pad), Image.Resampling.BICUBIC))
    frames = []
    for t in range(num_frames):
        phase = 2 * np.pi * t / num_frames
        dy, dx = int(pad * (1 + np.sin(phase + seed))), int(pad * (1 + np.sin(2 * phase)))
        image = texture[dy : dy + H, dx : dx + W].copy()
        y, x = (3 * t) % (H - 8), (7 * t) % (W - 8)
        image[y : y + 8, x : x + 8] = (255, (5 * t) % 256, 40)
        frames.append(image)
    return np.stack(frames)


X264_B = {"crf": "23", "bf": "3"}
# 12 frames in a burst, then gaps: timestamps in ms of a variable-frame-rate file (average 25 fps).
VFR_MS = sorted({round(1000 * (i / 25) ** 1.2 / (NUM_FRAMES / 25) ** 0.2) for i in range(NUM_FRAMES)})
VIDEOS = {
    # name: (codec, options, make_video keywords)
    "pyramid.mp4": ("libx264", {**X264_B, "b-pyramid": "normal"}, {}),
    "no_pyramid.mp4": ("libx264", {**X264_B, "b-pyramid": "none"}, {}),
    "no_bframes.mp4": ("libx264", {"crf": "23", "bf": "0"}, {}),
    "pyramid.mkv": ("libx264", {**X264_B, "b-pyramid": "normal"}, {}),
    "vfr.mp4": ("libx264", X264_B, {"pts_ms": VFR_MS}),
    # Timestamps from 0.7 s: a non-zero start time (and, with B-frames, an mp4 edit list).
    "late_start.mp4": ("libx264", X264_B, {"pts_ms": [700 + 40 * i for i in range(NUM_FRAMES)]}),
    "hevc.mp4": ("libx265", {"x265-params": "bframes=4:b-pyramid=1:log-level=error", "crf": "28"}, {}),
    "mpeg4.avi": ("mpeg4", {"bf": "2", "qscale": "4"}, {}),
    "mpeg4.mp4": ("mpeg4", {"bf": "2", "qscale": "4"}, {}),  # B-frames, the delay in the VOL header
    "mpeg2.mpg": ("mpeg2video", {"bf": "2", "qscale": "4"}, {}),
    # An AAC track beside the video; a fragmented mp4 (DASH-style: an empty index, the samples in fragments).
    "audio.mp4": ("libx264", X264_B, {"audio": True}),
    "fragmented.mp4": ("libx264", X264_B, {"container_options": {"movflags": "frag_keyframe+empty_moov"}}),
}
# The files the default tier checks byte for byte (the others: the slow tier): B-frame pyramids, another codec with
# B-frames and another container, a non-zero start.
DEFAULT_TIER_VIDEOS = ("pyramid.mp4", "hevc.mp4", "mpeg2.mpg", "late_start.mp4")


@functools.cache
def _video_bytes(name):
    """Each test video, written once per run (kept as bytes: the tmp folders are per test)."""
    import tempfile

    codec, options, kwargs = VIDEOS[name]
    frames = texture_frames(len(kwargs.get("pts_ms", range(NUM_FRAMES))))
    with tempfile.TemporaryDirectory() as folder:
        path = make_video(f"{folder}/{name}", codec=codec, options=options, frames=frames, gop=25, **kwargs)
        with open(path, "rb") as f:
            return f.read()


@pytest.fixture
def video(request, tmp_path):
    path = tmp_path / request.param
    path.write_bytes(_video_bytes(request.param))
    return str(path)


def both(path, num_frames, sampling_rate, seed=None, **kwargs):
    """The clip with skipping and without (random window from `seed`, else the test windows), after checking
    they hold the same bytes; (skipped, full)."""
    def rng():
        return None if seed is None else np.random.default_rng(seed)

    skipped = read_clip(path, num_frames, sampling_rate, rng(), **kwargs)
    full = read_clip(path, num_frames, sampling_rate, rng(), skip_nonref=False, **kwargs)
    np.testing.assert_array_equal(skipped.indices, full.indices)
    assert skipped.frames.dtype == full.frames.dtype and skipped.frames.shape == full.frames.shape
    np.testing.assert_array_equal(skipped.frames, full.frames)
    assert (skipped.start_s, skipped.end_s) == (full.start_s, full.end_s)
    # The plan decodes up to the last chosen packet at most, the full decode up to a frame after the last one.
    assert skipped.num_decoded <= full.num_decoded
    return skipped, full


@pytest.mark.parametrize("video", tiered(VIDEOS, keep=DEFAULT_TIER_VIDEOS), indirect=True)
def test_skip_nonref_is_byte_identical(video):
    # Index k is the k-th decoded frame where frames are evenly spaced from the stream start. Not in the AVI: its
    # B-frame timestamps, guessed by the demuxer, start one frame late (with or without skipping).
    evenly_spaced = not video.endswith(("vfr.mp4", "late_start.mp4", ".avi"))
    reference = decode_all(video) if evenly_spaced else None
    for sampling_rate in (1, 2, 4, 8):
        rng = np.random.default_rng(sampling_rate)
        for _ in range(3):  # random windows
            clip, _ = both(video, 8, sampling_rate, int(rng.integers(1 << 30)))
            if reference is not None:
                np.testing.assert_array_equal(clip.frames, reference[clip.indices])
        both(video, 8, sampling_rate)  # centred window
        both(video, 4, sampling_rate, num_windows=3, window_index=2)  # last window: ends on the last frame
    # Windows longer than the video (clamped to its last frame), a window from the first frame, a late range,
    # and threaded decoding (frame threads must honour the per-packet skip setting).
    both(video, 16, 8)
    both(video, 4, 2, start_s=0.0, end_s=0.4)
    both(video, 4, 3, start_s=2.0)
    both(video, 4, 4, start_s=2.8)  # past the last frames: clamped
    one, _ = both(video, 8, 4, 7)
    two, _ = both(video, 8, 4, 7, threads=2)
    np.testing.assert_array_equal(two.frames, one.frames)
    assert two.num_decoded == one.num_decoded


# Opened from their headers alone (`decode._open`): mp4 with H.264 whose SPS gives the reorder delay, HEVC or
# MPEG-4. The others take the full probe: H.264 whose SPS shows no delay (no B-frames: it cannot tell that from "not
# given"), a fragmented mp4 (no frame count in its index), and every container outside the mp4/mov family.
HEADER_ONLY = {"pyramid.mp4", "no_pyramid.mp4", "vfr.mp4", "late_start.mp4", "hevc.mp4", "audio.mp4", "mpeg4.mp4"}


@pytest.mark.parametrize("video", tiered(VIDEOS, keep=DEFAULT_TIER_VIDEOS), indirect=True)
def test_header_only_open_reads_what_the_full_probe_reads(video, monkeypatch):
    opens = []  # the options of each container opened: {} is the full probe
    open_with = decode._open_with
    monkeypatch.setattr(decode, "_open_with", lambda src, label, options: opens.append(options) or
                        open_with(src, label, options))

    def reads(path):
        with decode._video(path, path, 1) as (_, stream, meta):
            out = [meta, stream.codec_context.has_b_frames]
        for seed in range(4):
            for sampling_rate in (1, 4):
                clip = read_clip(path, 8, sampling_rate, np.random.default_rng(seed))
                out.append((clip.frames.tobytes(), clip.indices.tolist(), clip.num_decoded))
        clip = read_clip(path, 4, 2, None, num_windows=3, window_index=2, skip_nonref=False)
        out.append((clip.frames.tobytes(), clip.num_decoded))
        with decode.frames_on_grid(path) as (fps, frames):
            out.append((fps, [frame.to_ndarray(format="rgb24").tobytes() for frame in frames]))
        return out

    fast = reads(video)
    if video.rsplit("/", 1)[-1] in HEADER_ONLY:
        assert opens and all(options == decode._HEADER_ONLY for options in opens)
    else:  # each open tried the headers, then probed
        assert opens[::2] == [decode._HEADER_ONLY] * (len(opens) // 2) and opens[1::2] == [{}] * (len(opens) // 2)
    monkeypatch.setattr(decode, "_headers_suffice", lambda container: False)
    opens.clear()
    assert reads(video) == fast


@pytest.mark.parametrize("video", ["pyramid.mp4", "no_pyramid.mp4", "hevc.mp4", "mpeg4.avi"], indirect=True)
def test_skip_nonref_decodes_fewer_frames(video):
    rng = np.random.default_rng(0)
    skipped = full = 0
    for _ in range(8):
        seed = rng.integers(1 << 30)
        a, b = both(video, 8, 4, int(seed))
        skipped, full = skipped + a.num_decoded, full + b.num_decoded
    assert skipped < 0.9 * full, (skipped, full)


def test_skip_nonref_on_a_bench_video(tmp_path):
    """The data bench's video (x264 preset medium: adaptive B-frames with b-pyramid), at its clip recipe."""
    from vidjax.commands import data_bench

    (path,) = data_bench.make_videos(str(tmp_path), 1, seconds=4.0, fps=25, width=64, height=48, gop=50)
    reference = decode_all(path)
    skipped = full = 0
    for seed in range(6):
        a, b = both(path, 16, 4, seed, short_side=32)
        skipped, full = skipped + a.num_decoded, full + b.num_decoded
        np.testing.assert_array_equal(read_clip(path, 16, 4, np.random.default_rng(seed)).frames,
                                      reference[a.indices])
    assert skipped < full


class NoTimestamps(ContainerProxy):
    """The real container, except that the packets of its first demux (the plan's) carry no presentation
    timestamps; later demuxes (the full decode after a seek) get them as they are."""

    def __init__(self, container):
        super().__init__(container)
        self.demuxed = 0
        self.calls = 0

    def demux(self, *args, **kwargs):
        self.calls += 1
        first = self.calls == 1
        for packet in self.container.demux(*args, **kwargs):
            self.demuxed += first
            if first:
                packet.pts = None
            yield packet


@pytest.mark.parametrize("video", ["pyramid.mp4"], indirect=True)
@pytest.mark.parametrize("first_frame", [False, True])
def test_packets_without_timestamps_fall_back_to_decoding_every_frame(video, monkeypatch, first_frame):
    """The plan needs every packet's timestamp; without them the clip comes from the full decode, unchanged."""
    kwargs = {"start_s": 0.0, "end_s": 1.0} if first_frame else {}  # index 0 wanted: no seek before the plan
    full = read_clip(video, 4, 4, np.random.default_rng(1), skip_nonref=False, **kwargs)
    opened = []
    open_container = decode._open

    def open_without_timestamps(src, label):
        opened.append(NoTimestamps(open_container(src, label)))
        return opened[-1]

    monkeypatch.setattr(decode, "_open", open_without_timestamps)
    clip = read_clip(video, 4, 4, np.random.default_rng(1), **kwargs)
    assert opened[0].demuxed > 0  # the plan was tried
    np.testing.assert_array_equal(clip.indices, full.indices)
    np.testing.assert_array_equal(clip.frames, full.frames)
    assert clip.num_decoded == full.num_decoded  # nothing decoded before the plan gave up


def test_codecs_outside_the_list_decode_every_frame(tmp_path):
    """VP9 (its non-reference frames can update the entropy context) keeps the full decode."""
    path = make_video(tmp_path / "altref.webm", num_frames=40, codec="libvpx-vp9", frames=texture_frames(40),
                      options={"crf": "30", "b": "0", "auto-alt-ref": "1", "lag-in-frames": "8"}, gop=10)
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.name not in decode._SKIP_NONREF_CODECS
    clip, full = both(path, 4, 3, 0)
    assert clip.num_decoded == full.num_decoded


def cut_video(folder):
    """(the path of an mp4 whose header promises more frames than are there (moov first, data cut at half), the
    frames that decode before the cut)."""
    path = make_video(folder / "cut.mp4", codec="libx264", options={**X264_B, "b-pyramid": "normal"},
                      frames=texture_frames(), gop=25, container_options={"movflags": "faststart"})
    with open(path, "rb") as f:
        data = f.read()
    cut = folder / "cut_half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    decodable = 0
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == NUM_FRAMES
        with pytest.raises(av.InvalidDataError):  # the last packet is cut
            for _ in container.decode(video=0):
                decodable += 1
    assert 8 < decodable < NUM_FRAMES - 8
    return cut, decodable


def test_truncated_file_gives_the_same_clips_and_errors(tmp_path):
    """A header promising more frames than are there: clips before the cut are the same with skipping, and past it
    both raise the same error."""
    cut, decodable = cut_video(tmp_path)
    for seed in range(3):
        clip, _ = both(str(cut), 4, 2, seed, end_s=(decodable - 4) / 25)
        assert clip.indices[-1] < decodable
    # Windows past the frames that decode: whatever the full decode does (resample, or raise), so does the plan.
    for kwargs in ({"start_s": 2.5}, {"num_windows": 2, "window_index": 1}, {"start_s": 1.0}):
        try:
            full = read_clip(str(cut), 4, 2, skip_nonref=False, **kwargs)
        except VideoDecodeError as e:
            with pytest.raises(VideoDecodeError) as skipped:
                read_clip(str(cut), 4, 2, **kwargs)
            assert str(skipped.value) == str(e)
        else:
            clip = read_clip(str(cut), 4, 2, **kwargs)
            np.testing.assert_array_equal(clip.indices, full.indices)
            np.testing.assert_array_equal(clip.frames, full.frames)


def one_by_one(path, num_frames, sampling_rate, num_clips, **kwargs):
    """(frames, indices, start_s, end_s, frames decoded) of each test clip read alone with `read_clip`, stacked."""
    clips = [read_clip(path, num_frames, sampling_rate, num_windows=num_clips, window_index=i, **kwargs)
             for i in range(num_clips)]
    return (np.stack([c.frames for c in clips]), np.stack([c.indices for c in clips]), clips[0].start_s,
            clips[-1].end_s, sum(c.num_decoded for c in clips))


def assert_same_clips(path, num_frames, sampling_rate, num_clips, **kwargs):
    frames, indices, start_s, end_s, decoded = one_by_one(path, num_frames, sampling_rate, num_clips, **kwargs)
    together = decode.read_clips(path, num_frames, sampling_rate, num_clips, **kwargs)
    np.testing.assert_array_equal(together.indices, indices)
    np.testing.assert_array_equal(together.frames, frames)
    assert (together.start_s, together.end_s) == (start_s, end_s)
    return together.num_decoded, decoded


@pytest.mark.parametrize("video", tiered(VIDEOS, keep=DEFAULT_TIER_VIDEOS), indirect=True)
def test_read_clips_are_the_test_clips_read_one_by_one(video):
    for num_clips in (1, 2, 5):  # 32-frame windows on 75 frames: 2 apart (read alone), 5 overlapping (together)
        together, alone = assert_same_clips(video, 8, 4, num_clips, short_side=32)
        assert together < alone if num_clips == 5 else together == alone  # shared frames decoded once
        assert_same_clips(video, 4, 2, num_clips, start_s=0.5, end_s=2.0)
        assert_same_clips(video, 16, 8, num_clips)  # windows longer than the video: clamped to its last frame


def test_read_clips_groups_windows_that_overlap_within_the_span_and_memory_budget(monkeypatch):
    windows = [np.arange(i * 12, i * 12 + 16) for i in range(5)]  # 16 frames every 12: 64 distinct
    assert decode._window_groups(windows, Fraction(25), 1) == [[0, 1, 2, 3, 4]]
    assert decode._window_groups(windows, Fraction(4), 1) == [[0, 1, 2], [3, 4]]  # 10 s at 4 fps: 40 frames
    assert decode._window_groups([np.arange(16), np.arange(16, 32)], Fraction(25), 1) == [[0, 1]]  # adjoining
    assert decode._window_groups([np.arange(16), np.arange(18, 34)], Fraction(25), 1) == [[0], [1]]  # a gap
    monkeypatch.setattr(decode, "_GROUP_BYTES", 40)
    assert decode._window_groups(windows, Fraction(25), 1) == [[0, 1, 2], [3, 4]]
    assert decode._window_groups(windows, Fraction(25), 100) == [[0], [1], [2], [3], [4]]  # one window alone


@pytest.mark.parametrize("video", ["pyramid.mp4", "mpeg2.mpg"], indirect=True)
def test_read_clips_split_into_groups_read_the_same(video, monkeypatch):
    monkeypatch.setattr(decode, "_SEEK_GAP_S", 1)  # 1 s: the 3 s video's 5 windows in several groups
    assert_same_clips(video, 8, 2, 5)
    monkeypatch.setattr(decode, "_GROUP_BYTES", 1)  # every window alone
    together, alone = assert_same_clips(video, 8, 2, 5)
    assert together == alone


def test_read_clips_of_a_cut_file_are_what_each_window_gives(tmp_path):
    """A header promising more frames than decode: each window resamples (or fails) as `read_clip` alone does."""
    cut, decodable = cut_video(tmp_path)
    outcomes = []
    for num_clips, kwargs in ((3, {"end_s": (decodable - 4) / 25}), (3, {}), (2, {"start_s": 1.0}),
                              (4, {"end_s": 1.2})):
        try:
            alone = one_by_one(str(cut), 4, 2, num_clips, **kwargs)
        except VideoDecodeError as e:
            with pytest.raises(VideoDecodeError) as together:
                decode.read_clips(str(cut), 4, 2, num_clips, **kwargs)
            assert str(together.value) == str(e)
            outcomes.append("error")
        else:
            clips = decode.read_clips(str(cut), 4, 2, num_clips, **kwargs)
            np.testing.assert_array_equal(clips.indices, alone[1])
            np.testing.assert_array_equal(clips.frames, alone[0])
            outcomes.append("clips")
    assert outcomes[0] == "clips" and "error" in outcomes  # windows before the cut read; past it, the same error


def test_bench_shows_seek_skip_beside_seek_sws(tmp_path):
    from vidjax.commands import data_bench

    paths = data_bench.make_videos(str(tmp_path), 2, seconds=3.0, fps=25, width=64, height=48, gop=50)
    recipe = data_bench.Recipe(num_frames=8, sampling_rate=4, short_side=32, crop=24)
    result = data_bench.run(paths, recipe, ["seek_sws", "seek_skip"], workers=[0], clips=6)
    decoded = result["frames_decoded_per_clip"]
    assert 0 < decoded["seek_skip"] < decoded["seek_sws"]
    assert result["cpu_ms_per_clip"]["seek_skip"]["0"] > 0
    assert "seek_skip" in data_bench.format_table(result)


def test_bench_times_test_clips_one_by_one_and_together(tmp_path):
    from vidjax.commands import data_bench

    paths = data_bench.make_videos(str(tmp_path), 2, seconds=3.0, fps=25, width=64, height=48, gop=50)
    recipe = data_bench.Recipe(num_frames=8, sampling_rate=4, short_side=32, crop=24)
    result = data_bench.run_test_clips(paths, recipe, num_clips=5, rounds=2)
    decoded = result["frames_decoded_per_video"]
    assert 0 < decoded["together"] < decoded["one_by_one"]
    assert len(result["cpu_ms_per_video_each_round"]["together"]) == 2 and result["cpu_ms_per_video"]["together"] > 0
    assert "together is" in data_bench.format_test_clips_table(result)


def windows_both(path, spans, num_frames, sampling_rate, num_clips=1):
    """`read_windows` with skipping and without, after checking that they give the same clips and that each is the
    `read_clips` of its span; (skipped, full), lists of Clips."""
    skipped = list(decode.read_windows(path, spans, num_frames, sampling_rate, num_clips=num_clips))
    full = list(decode.read_windows(path, spans, num_frames, sampling_rate, num_clips=num_clips, skip_nonref=False))
    assert len(skipped) == len(full) == len(spans)
    for (start, end), a, b in zip(spans, skipped, full, strict=True):
        alone = decode.read_clips(path, num_frames, sampling_rate, num_clips, start_s=start, end_s=end)
        for clip in (a, b):
            np.testing.assert_array_equal(clip.indices, alone.indices)
            np.testing.assert_array_equal(clip.frames, alone.frames)
            assert (clip.start_s, clip.end_s) == (alone.start_s, alone.end_s)
    decoded = [c.num_decoded for c in skipped]
    assert decoded == sorted(decoded)  # the pass's count so far
    return skipped, full


@pytest.mark.parametrize("video", list(VIDEOS), indirect=True)
def test_sparse_windows_decode_only_what_they_sample(video):
    """Half-second windows every second, 4 frames 2 apart (predict --window=0.5 --stride=1 --sampling_rate=2): the
    same clips as each span read alone and as the frame-by-frame pass, from fewer decoded frames (every frame of
    the file without B-frames is a reference frame: none can be left out)."""
    spans = [(s, s + 0.5) for s in np.arange(0.0, 2.6, 1.0)]
    skipped, full = windows_both(video, spans, 4, 2)
    counts = skipped[-1].num_decoded, full[-1].num_decoded
    assert counts[0] <= counts[1] if video.endswith("no_bframes.mp4") else counts[0] < 0.9 * counts[1], counts


@pytest.mark.parametrize("video", ["pyramid.mp4", "vfr.mp4", "late_start.mp4"], indirect=True)
def test_dense_and_overlapping_windows_decode_no_more_than_every_frame(video):
    """Every frame sampled (1-s windows of 25 frames at rate 1, overlapping by half) and two clips a window: no frame
    is skipped, and the pass decodes no more than the frame-by-frame one."""
    spans = [(s, s + 1.0) for s in np.arange(0.0, 2.1, 0.5)]
    skipped, full = windows_both(video, spans, 25, 1)
    assert skipped[-1].num_decoded <= full[-1].num_decoded
    skipped, full = windows_both(video, spans, 4, 3, num_clips=2)
    assert skipped[-1].num_decoded <= full[-1].num_decoded


def test_windows_apart_are_reached_by_seeking(monkeypatch):
    """Windows more than `_SEEK_GAP_S` apart are separate runs, each from a seek; each run decodes only what it
    samples."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        frames = np.concatenate([texture_frames(), texture_frames(seed=1), texture_frames(seed=2)])  # 9 s
        path = make_video(f"{folder}/long.mp4", codec="libx264", options=X264_B, frames=frames, gop=25)
        monkeypatch.setattr(decode, "_SEEK_GAP_S", 2)
        spans = [(0.0, 1.0), (0.5, 1.5), (5.0, 6.0), (8.0, 9.0)]
        assert [len(run) for run in decode._runs([np.arange(int(a * 25), int(b * 25)) for a, b in spans],
                                                 Fraction(25))] == [2, 1, 1]
        skipped, full = windows_both(path, spans, 6, 3)
        assert skipped[-1].num_decoded < full[-1].num_decoded < len(frames)


@pytest.mark.parametrize("video", ["pyramid.mp4"], indirect=True)
def test_a_plan_that_fails_part_way_decodes_the_rest_frame_by_frame(video, monkeypatch):
    """Packets that lose their timestamps after the first second: the windows given before are the plan's, the rest
    come from the frame-by-frame pass, all of them the same clips."""
    spans = [(s, s + 0.5) for s in np.arange(0.0, 2.6, 0.5)]
    expected = [c.frames for c in decode.read_windows(video, spans, 4, 2, skip_nonref=False)]
    open_container = decode._open

    class LosesTimestamps(ContainerProxy):
        def demux(self, *args, **kwargs):
            for n, packet in enumerate(self.container.demux(*args, **kwargs)):
                if n >= 30:
                    packet.pts = None
                yield packet

    monkeypatch.setattr(decode, "_open", lambda src, label: LosesTimestamps(open_container(src, label)))
    got = list(decode.read_windows(video, spans, 4, 2))
    for clip, frames in zip(got, expected, strict=True):
        np.testing.assert_array_equal(clip.frames, frames)


def test_windows_of_a_cut_file_fail_as_the_frame_by_frame_pass_does(tmp_path):
    """A file cut at half: the windows before the cut are given, then the same error with or without the plan."""
    cut, decodable = cut_video(tmp_path)
    spans = [(s, s + 0.5) for s in np.arange(0.0, 2.6, 0.5)]
    results = []
    for skip in (True, False):
        clips = []
        with pytest.raises(VideoDecodeError, match="corrupt data after") as error:
            for clip in decode.read_windows(str(cut), spans, 4, 2, skip_nonref=skip):
                clips.append(clip.frames)
        results.append((clips, str(error.value)))
    assert len(results[0][0]) == len(results[1][0]) >= 1
    for a, b in zip(results[0][0], results[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert results[0][1] == results[1][1]


@pytest.mark.parametrize("video", list(VIDEOS), indirect=True)
def test_a_clip_after_a_seek_is_the_frames_a_decode_from_the_start_shows(video):
    """The clip of [2.0, 2.5) s is the frames a decode from the start shows at its indices (`frames_on_grid`), with and
    without the plan: an MPEG program stream, whose seeks leave the timestamps off, decodes from the start."""
    with decode.frames_on_grid(video) as (_, frames):
        reference = np.stack([frame.to_ndarray(format="rgb24") for frame in frames])
    for skip in (True, False):
        clip = read_clip(video, 4, 2, start_s=2.0, end_s=2.5, skip_nonref=skip)
        np.testing.assert_array_equal(clip.frames, reference[clip.indices])
