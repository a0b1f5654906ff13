"""NVDEC for the device-pixel path (`vidjax.data.nvdec`, config.data.decoder="nvdec", issue 51).

Everywhere: the refusals (an unknown decoder, NVDEC with host pixels, no wheel or no GPU driver), each one line that
says what to do; and the host's share of the NVDEC path (`nvdec.clip_of`: NV12 pictures, the sampled indices, the
crops' region cut by `decode.cut_planes`) given NV12 pictures made by PyAV, which must equal `decode.read_planes`
bit for bit. Where an NVIDIA GPU and PyNvVideoCodec are (`nvdec.problem()` is None), the frames come from the GPU's
engine: the same planes as PyAV's on the awkward files and a 640 x 360 B-frame stream, and the same batches through
`pipeline.make_dataset`."""

import av
import numpy as np
import pytest
from test_data_e2e import config_for, library, read  # noqa: F401  (library: the e2e files, a fixture)
from test_decode import make_video
from test_pixels import FILES, SHORT_SIDE, _crops, _file, textured

from vidjax import config_lib
from vidjax.commands import data_bench
from vidjax.data import decode, nvdec, pipeline

CANVAS = (80, 96)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("nvdec"))


def _assert_same_clip(got: decode.PlaneClip, want: decode.PlaneClip):
    for field in ("y", "u", "v", "box", "flip", "valid", "colour", "indices"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert (got.fps, got.start_s, got.end_s, got.scaled) == (want.fps, want.start_s, want.end_s, want.scaled)


def test_an_unknown_decoder_and_nvdec_with_host_pixels_are_refused_in_one_line(library):  # noqa: F811
    config = config_for("csv", library, pixels="device", decoder="ffmpeg")
    assert "config.data.decoder='ffmpeg': one of pyav, nvdec." in pipeline.data_config_problems(config)
    config.data.update(decoder="nvdec", pixels="host")
    with pytest.raises(config_lib.ConfigError, match=r"^config.data.decoder='nvdec' decodes into the planes the "
                       r"device-pixel path sends, but these training clips go the host way \(config.data.pixels="
                       r"'host'\); set --config.data.pixels=device.$"):
        pipeline.resolve_decoder(config.data, "host")
    config.data.decoder = "pyav"
    assert pipeline.resolve_decoder(config.data, "host") == "pyav"


def test_nvdec_without_its_wheel_is_refused_with_the_install_command(library, monkeypatch):  # noqa: F811
    monkeypatch.setitem(__import__("sys").modules, "PyNvVideoCodec", None)  # as on a machine without the wheel
    nvdec.problem.cache_clear()
    try:
        why = nvdec.problem()
        config = config_for("csv", library, pixels="device", decoder="nvdec")
        message = ("config.data.decoder='nvdec': PyNvVideoCodec is not installed (pip install 'vidjax[nvdec]'): "
                   "import of PyNvVideoCodec halted; None in sys.modules. Use --config.data.decoder=pyav here.")
        assert pipeline.data_config_problems(config) == [message]
        with pytest.raises(config_lib.ConfigError) as err:
            read(config, "train", 1)
        assert str(err.value) == message and "\n" not in message
        assert data_bench.missing_loader("vidjax_nvdec") == why  # the bench reports it and runs the rest
    finally:
        nvdec.problem.cache_clear()


@pytest.mark.parametrize("name", ["bt601_limited.mp4", "bt709_full.mp4", "rotated.mp4"])
def test_the_host_share_of_the_nvdec_path_gives_pyavs_planes(folder, name):
    """`nvdec.clip_of` on each sampled frame's NV12 picture (here PyAV's, converted; NVDEC gives the same for H.264,
    whose decoding is exact) with the indices `decode.sample_frames` draws: the clip `decode.read_planes` gives
    from the same generator, array for array (BT.601, BT.709 full range, a display rotation)."""
    path = _file(folder, name)
    picture = decode.first_picture(path)
    with av.open(path) as container:
        frames = list(container.decode(video=0))
    assert picture.num_frames == len(frames) == 6 and picture.coded == (frames[0].height, frames[0].width)
    assert picture.quarter_turns == (1 if name == "rotated.mp4" else 0) and picture.planar_420
    def crops(height, width, rng):  # two crops, drawn from the clip's generator after its frames
        return _crops(height, width, 2)[:: 1 if rng.random() < 0.5 else -1]

    for seed in range(3):
        rng = np.random.default_rng(seed)
        want = decode.read_planes(path, 3, 2, rng, canvas=CANVAS, short_side=SHORT_SIDE,
                                  crops=lambda h, w, r=rng: crops(h, w, r))
        rng = np.random.default_rng(seed)
        indices = decode.sample_frames(picture.num_frames, picture.fps, 3, 2, rng)
        nv12 = {int(i): frames[int(i)].reformat(format="nv12").to_ndarray() for i in set(indices.tolist())}
        got = nvdec.clip_of(picture, indices, nv12, CANVAS, lambda h, w, r=rng: crops(h, w, r), SHORT_SIDE)
        _assert_same_clip(got, want)
        assert got.num_decoded == len(set(indices.tolist()))


def test_nv12_planes_are_the_frames_yuv420p_planes_turned_upright(folder):
    path = _file(folder, "rotated.mp4")
    with av.open(path) as container:
        frame = next(container.decode(video=0))
    y, u, v = nvdec.nv12_planes(frame.reformat(format="nv12").to_ndarray(), 1)
    for got, want in zip((y, u, v), decode.upright_planes(frame), strict=True):
        assert got.shape == want.shape == ((64, 48) if got is y else (32, 24))
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------------------
# Where an NVIDIA GPU and PyNvVideoCodec are: the frames from the GPU's engine.

on_gpu = pytest.mark.skipif(nvdec.problem() is not None, reason=f"NVDEC is not here: {nvdec.problem()}")


@pytest.fixture(scope="module")
def bench_like(folder):
    """640 x 360 H.264 with B-frames and a keyframe every 32 frames, as the data benchmark's files are."""
    return make_video(f"{folder}/bench_like.mp4", codec="libx264", options={"crf": "20", "bf": "3"}, gop=32,
                      frames=textured(360, 640, num_frames=96), rate=30)


@on_gpu
@pytest.mark.parametrize("name", [*FILES, "bench_like.mp4"])
def test_nvdec_gives_pyavs_planes(folder, bench_like, name):
    """`nvdec.read_planes` against `decode.read_planes`, from the same generators: H.264 bit for bit, from the GPU
    (no clip given to PyAV); the VP9 file of an odd size goes to PyAV, with the same result."""
    path = bench_like if name == "bench_like.mp4" else _file(folder, name)
    count = decode.first_picture(path).num_frames
    before = nvdec.fallbacks()
    for seed in range(4):
        kwargs = dict(canvas=(400, 400) if name == "bench_like.mp4" else CANVAS, short_side=SHORT_SIDE * 4
                      if name == "bench_like.mp4" else SHORT_SIDE, crops=lambda h, w: _crops(h, w, 2))
        frames = 16 if count > 16 else 3
        want = decode.read_planes(path, frames, 2, np.random.default_rng(seed), **kwargs)
        got = nvdec.read_planes(path, frames, 2, np.random.default_rng(seed), **kwargs)
        _assert_same_clip(got, want)
    assert nvdec.fallbacks() - before == (4 if name == "odd_size.webm" else 0)


@on_gpu
def test_nvdec_batches_equal_pyavs_through_the_input_path(library):  # noqa: F811
    """The trainer's input path with config.data.decoder="nvdec": the same batches as "pyav", key for key, bit for
    bit (the library's MP4 files from NVDEC; its Matroska and AVI files go to PyAV: NVDEC gave a Matroska file's
    later frames one late, and failed on the AVI's MPEG-4)."""
    want = read(config_for("csv", library, batch_size=8, train_crop="multi_scale", pixels="device"), "train", 3)[1]
    got = read(config_for("csv", library, batch_size=8, train_crop="multi_scale", pixels="device",
                          decoder="nvdec"), "train", 3)[1]
    for a, b in zip(got, want, strict=True):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
