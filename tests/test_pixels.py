"""Pixels on the device (`vidjax.ops.pixels`, issue 51): a decoded picture's YUV 4:2:0 planes of a crop's region
(`decode.CropRegion`), converted and resampled by the jitted function, equal the host path's crop
(`read_clip(crops=...)`: libswscale's conversion, PIL's antialiased resize, the flip) within 40 dB PSNR, with the
same crop boxes and flips, on BT.601 and BT.709, limited and full range, an odd size and a display rotation."""

import functools

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_decode import make_video

from vidjax.data import decode, transforms
from vidjax.ops import pixels

BT709 = "colormatrix=bt709:colorprim=bt709:transfer=bt709"
FILES = {
    # name: (codec, pixel format, options, (height, width))
    "bt601_limited.mp4": ("libx264", "yuv420p", {"crf": "18"}, (48, 64)),
    "bt709_limited.mp4": ("libx264", "yuv420p", {"crf": "18", "x264-params": BT709}, (48, 64)),
    "bt709_full.mp4": ("libx264", "yuvj420p", {"crf": "18", "x264-params": BT709 + ":range=pc"}, (48, 64)),
    "odd_size.webm": ("libvpx-vp9", "yuv420p", {"crf": "20", "b": "0"}, (51, 75)),
    "rotated.mp4": ("libx264", "yuv420p", {"crf": "18"}, (48, 64)),  # shown turned 90 degrees: 64 x 48
}
SHORT_SIDE, SIZE = 40, 32


def textured(height, width, num_frames=6):
    """A smooth colour texture panned over the frames, so every channel and both chroma planes vary."""
    rng = np.random.default_rng(height * width)
    coarse = rng.integers(0, 256, (height // 6 + 2, width // 6 + 3, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((width + num_frames, height), Image.Resampling.BICUBIC))
    return np.stack([big[:, t : t + width] for t in range(num_frames)])


@functools.cache
def _file(folder, name):
    codec, pix_fmt, options, (height, width) = FILES[name]
    return make_video(f"{folder}/{name}", codec=codec, options=options, pix_fmt=pix_fmt,
                      frames=textured(height, width), rotation=90 if name.startswith("rotated") else None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pixels"))


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@functools.partial(jax.jit, static_argnames=("matrix", "full_range", "out_height", "out_width"))
def on_device(y, u, v, box, flip, *, matrix, full_range, out_height, out_width):
    rgb = pixels.yuv420_to_rgb(y, u, v, matrix=matrix, full_range=full_range)
    return jnp.round(pixels.crop_resize(rgb, box, out_height, out_width, flip))


@pytest.mark.parametrize("name", list(FILES))
def test_device_pixels_equal_the_host_crop_within_40_db(folder, name):
    path = _file(folder, name)
    with av.open(path) as container:
        frames = list(container.decode(video=0))
    quarter_turns, height, width = decode._resized_size(frames[0], SHORT_SIDE)
    assert name != "odd_size.webm" or frames[0].width % 2 == 1  # an odd width, with its half chroma column
    assert quarter_turns == (1 if name == "rotated.mp4" else 0)
    assert (height > width) == (name == "rotated.mp4")  # coded 48 x 64: shown portrait only where rotated
    kinds = ("random_resized", "multi_scale", "random")
    crops = [transforms.train_crop(kinds[i % 3], height, width, SIZE, np.random.default_rng(i)) for i in range(6)]
    assert {c.flip for c in crops} == {False, True} and len({(c.height, c.width) for c in crops}) > 2
    clip = decode.read_clip(path, len(frames), 1, start_s=0, short_side=SHORT_SIDE, crops=lambda h, w: crops)
    assert clip.frames.shape == (len(crops), len(frames), SIZE, SIZE, 3)
    matrix, full_range = decode.colour_of(frames[0])
    assert (matrix, full_range) == {"bt709_limited.mp4": ("bt709", False), "bt709_full.mp4": ("bt709", True)}.get(
        name, ("bt601", False))
    for c, crop in enumerate(crops):
        picture = decode.upright_planes(frames[0])[0].shape
        region = decode.CropRegion.of(*picture, crop, height, width)
        left, top, right, bottom = region.box
        for t, frame in enumerate(frames):
            y, u, v = region.planes(*decode.upright_planes(frame))
            device = on_device(y, u, v, jnp.array([top, left, bottom, right]), crop.flip, matrix=matrix,
                               full_range=full_range, out_height=SIZE, out_width=SIZE)
            assert psnr(device, clip.frames[c, t]) >= 40, (crop, t, psnr(device, clip.frames[c, t]))


def test_a_matrix_without_a_device_conversion_is_refused_in_one_line():
    frame = av.VideoFrame(16, 16, "yuv420p")
    frame.colorspace = 9  # BT.2020 non-constant luminance
    with pytest.raises(ValueError, match="colour matrix 9 .* has no device conversion; the host path converts it"):
        decode.colour_of(frame)
    with pytest.raises(ValueError, match="matrix='bt2020'; choose one of bt601, bt709"):
        pixels.yuv420_to_rgb(np.zeros((2, 2), np.uint8), np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8),
                             matrix="bt2020")


@functools.partial(jax.jit, static_argnames=("out_height", "out_width", "dtype"))
def _from_planes(y, u, v, box, flip, valid, colour, *, out_height, out_width, dtype=jnp.float32):
    return jnp.round(pixels.crops_from_planes(y, u, v, box, flip, valid, colour, out_height, out_width, dtype))


def _crops(height, width, count=6):
    kinds = ("random_resized", "multi_scale", "random")
    return [transforms.train_crop(kinds[i % 3], height, width, SIZE, np.random.default_rng(i)) for i in range(count)]


@pytest.mark.parametrize("name", list(FILES))
def test_planes_sent_for_the_device_give_the_host_crops_within_40_db(folder, name):
    """`decode.read_planes` (the region of every crop, padded into a canvas) then `pixels.crops_from_planes` (two
    matrix products a plane, then the conversion) against `read_clip(crops=...)`: the same frames, boxes and flips,
    each crop within 40 dB, the padding never read."""
    path = _file(folder, name)
    with av.open(path) as container:
        num_frames = sum(1 for _ in container.decode(video=0))
    drawn = {}

    def crops(height, width):
        drawn.setdefault("crops", _crops(height, width))
        return drawn["crops"]

    host = decode.read_clip(path, num_frames, 1, start_s=0, short_side=SHORT_SIDE, crops=crops)
    canvas = (80, 96)
    sent = decode.read_planes(path, num_frames, 1, start_s=0, short_side=SHORT_SIDE, crops=crops, canvas=canvas)
    assert not sent.scaled and sent.y.shape == (num_frames, *canvas) and sent.u.shape == (num_frames, 40, 48)
    np.testing.assert_array_equal(sent.indices, host.indices)
    rows, cols = sent.valid
    assert not sent.y[:, rows:].any() and not sent.y[:, :, cols:].any()  # zeros beyond the region
    assert (pixels.MATRIX_NAMES[sent.colour[0]], bool(sent.colour[1])) == {
        "bt709_limited.mp4": ("bt709", False), "bt709_full.mp4": ("bt709", True)}.get(name, ("bt601", False))
    noisy = [np.where(np.arange(canvas[0])[:, None] < rows, p, 255).astype(np.uint8) for p in sent.y]
    # The padding's values change nothing; bfloat16 products (an accelerator's: the samples exact, the weights and
    # the rows' sums rounded) stay within 40 dB too.
    for y, dtype in ((sent.y, jnp.float32), (np.stack(noisy), jnp.float32), (sent.y, jnp.bfloat16)):
        device = _from_planes(y, sent.u, sent.v, sent.box, sent.flip, sent.valid, sent.colour, out_height=SIZE,
                              out_width=SIZE, dtype=dtype)
        assert device.shape == host.frames.shape
        for c in range(len(device)):
            for t in range(num_frames):
                assert psnr(device[c, t], host.frames[c, t]) >= 40, (name, c, t, psnr(device[c, t], host.frames[c, t]))


def test_a_region_larger_than_the_canvas_is_downscaled_on_the_host_and_stays_close(folder):
    path = _file(folder, "bt601_limited.mp4")
    drawn = {}

    def crops(height, width):
        drawn.setdefault("crops", [transforms.Crop(0, 0, height, height, SIZE, SIZE, False)])
        return drawn["crops"]

    host = decode.read_clip(path, 4, 1, start_s=0, short_side=SHORT_SIDE, crops=crops)
    sent = decode.read_planes(path, 4, 1, start_s=0, short_side=SHORT_SIDE, crops=crops, canvas=(40, 40))
    assert sent.scaled and max(sent.valid) == 40 and min(sent.valid) < 40  # the 48 x 54 region fitted into 40 x 40
    device = _from_planes(sent.y, sent.u, sent.v, sent.box, sent.flip, sent.valid, sent.colour, out_height=SIZE,
                          out_width=SIZE)
    # Two resamples (48 x 54 -> 36 x 40 on the host, then to 32 x 32) against one: 28.9 dB measured on this texture.
    assert min(psnr(device[0, t], host.frames[0, t]) for t in range(4)) >= 27
    with pytest.raises(ValueError, match=r"canvas=\(40, 41\): rows and columns must be positive and even"):
        decode.read_planes(path, 4, 1, short_side=SHORT_SIDE, crops=crops, canvas=(40, 41))
    assert decode._DEVICE_MATRICES_ORDER == pixels.MATRIX_NAMES
