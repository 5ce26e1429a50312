"""microscopy: which channel, which plane, what pixel size — on TIFF bytes written by tifffile
the way ImageJ/Fiji, OME writers and plain scripts write them."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from service import imaging, microscopy
from service.microscopy import Selection, SelectionError
from service.structure import Limits

LIMIT = 10_000_000
PAGES = 1000
RNG = np.random.default_rng(7)
H, W = 40, 52


def plane(seed: int, dtype: type = np.uint16) -> np.ndarray:
    """A distinct random plane per seed, so a wrong channel/plane never compares equal."""
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top, (H, W), dtype=dtype)


def tiff(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **options)
    return out.getvalue()


def select(data: bytes, **choice) -> microscopy.Plane:
    return microscopy.select(data, Selection(**choice), LIMIT, PAGES)


CYTO, NUCLEI = plane(1), plane(2)
IJ_TWO_CHANNEL = tiff(
    np.stack([CYTO, NUCLEI]), imagej=True, resolution=(1 / 0.65, 1 / 0.65),
    metadata={"axes": "CYX", "unit": "micron", "Labels": ["Cytoplasm", "DAPI"]},
)
OME_CHANNELS = [plane(10 + k) for k in range(3)]
OME_THREE_CHANNEL = tiff(
    np.stack(OME_CHANNELS), ome=True,
    metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DAPI", "mCherry"]},
              "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm",
              "PhysicalSizeY": 0.7, "PhysicalSizeYUnit": "µm"},
)
Z_PLANES = np.stack([plane(20 + k) for k in range(10)])
IJ_ZSTACK = tiff(Z_PLANES, imagej=True, metadata={"axes": "ZYX"})


# --- channels ---------------------------------------------------------------------------------


def test_imagej_two_channel_needs_a_channel_and_lists_both_by_index_and_name() -> None:
    layout = microscopy.probe(IJ_TWO_CHANNEL, LIMIT, PAGES)
    assert layout.format == "ImageJ TIFF" and layout.axes == "CYX"
    assert [(c.index, c.name) for c in layout.channels] == [(0, "Cytoplasm"), (1, "DAPI")]
    with pytest.raises(SelectionError) as err:
        select(IJ_TWO_CHANNEL)
    assert err.value.params == ("channel",)
    assert err.value.choices["channels"] == [{"index": 0, "name": "Cytoplasm"}, {"index": 1, "name": "DAPI"}]
    assert "DAPI" in str(err.value) and "Cytoplasm" in str(err.value)


@pytest.mark.parametrize("channel", ["1", "DAPI", "dapi", " Dapi "])
def test_the_nuclei_channel_is_chosen_by_index_or_name_in_any_case(channel: str) -> None:
    chosen = select(IJ_TWO_CHANNEL, channel=channel)
    assert np.array_equal(chosen.image, NUCLEI)
    assert chosen.channel == microscopy.Channel(1, "DAPI")


@pytest.mark.parametrize("channel", ["2", "Hoechst", "-1"])
def test_a_channel_the_image_lacks_is_refused_with_the_choices(channel: str) -> None:
    with pytest.raises(SelectionError) as err:
        select(IJ_TWO_CHANNEL, channel=channel)
    assert err.value.params == ("channel",)
    assert "0 (Cytoplasm), 1 (DAPI)" in str(err.value)


def test_ome_channel_names_and_pixel_size_in_its_units() -> None:
    layout = microscopy.probe(OME_THREE_CHANNEL, LIMIT, PAGES)
    assert layout.format == "OME-TIFF"
    assert [c.name for c in layout.channels] == ["GFP", "DAPI", "mCherry"]
    assert layout.pixel_size == microscopy.PixelSize(0.65, 0.7, "ome")
    for index, name in enumerate(["gfp", "DAPI", "MCHERRY"]):
        assert np.array_equal(select(OME_THREE_CHANNEL, channel=name).image, OME_CHANNELS[index])


def test_a_single_channel_image_needs_no_choice_and_accepts_channel_zero() -> None:
    grey = plane(3)
    data = tiff(grey)
    assert np.array_equal(select(data).image, grey)
    assert np.array_equal(select(data, channel="0").image, grey)
    with pytest.raises(SelectionError):
        select(data, channel="1")


# --- colour -----------------------------------------------------------------------------------


def composite() -> np.ndarray:
    """Cytoplasm in red and green, nuclei in blue: channels that differ."""
    return np.dstack([plane(30, np.uint8), plane(31, np.uint8), plane(32, np.uint8)])


@pytest.mark.parametrize("encode", ["png", "tiff"])
def test_an_rgb_composite_needs_a_channel_and_blue_is_the_blue_plane(encode: str) -> None:
    rgb = composite()
    if encode == "png":
        data = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    else:
        data = tiff(rgb, photometric="rgb")
    with pytest.raises(SelectionError) as err:
        select(data)
    assert [c["name"] for c in err.value.choices["channels"]] == ["red", "green", "blue"]
    assert "channel=gray" in str(err.value)
    assert np.array_equal(select(data, channel="blue").image, rgb[:, :, 2])
    assert np.array_equal(select(data, channel="2").image, rgb[:, :, 2])
    mixed = select(data, channel="gray")
    assert mixed.mixed and mixed.image.shape == rgb.shape  # kept whole: the model's input mixes it


def test_a_three_channel_model_takes_an_rgb_composite_whole() -> None:
    rgb = composite()
    chosen = microscopy.select(tiff(rgb, photometric="rgb"), Selection(), LIMIT, PAGES, model_channels=3)
    assert np.array_equal(chosen.image, rgb)


@pytest.mark.parametrize("fmt", [".png", ".jpg", ".tif"])
def test_grey_saved_as_rgb_just_works(fmt: str) -> None:
    grey = cv2.GaussianBlur(plane(33, np.uint8), (0, 0), 2)
    data = cv2.imencode(fmt, np.dstack([grey] * 3))[1].tobytes()
    chosen = select(data)
    assert chosen.layout.rgb and chosen.layout.grey_rgb
    assert chosen.channel is None and chosen.image.shape == (H, W, 3)


@pytest.mark.parametrize("colour", [0, 1, 2])
@pytest.mark.parametrize("encode", ["png", "tiff"])
def test_one_stain_exported_in_its_colour_is_that_channel_with_a_note(colour: int, encode: str) -> None:
    # Fiji's "RGB Color" of a DAPI channel with a blue LUT: the other two channels are empty
    stain = cv2.GaussianBlur(plane(34, np.uint8), (0, 0), 2)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, colour] = stain
    if encode == "png":
        data = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    else:
        data = tiff(rgb, photometric="rgb")
    layout = microscopy.probe(data, LIMIT, PAGES)
    assert layout.rgb and not layout.grey_rgb and layout.signal_channel == colour
    assert not layout.needs_channel
    chosen = select(data)
    assert chosen.channel == microscopy.Channel(colour, microscopy.RGB_NAMES[colour])
    assert np.array_equal(chosen.image, stain)
    assert any(f"only the {microscopy.RGB_NAMES[colour]} channel" in w for w in chosen.warnings)
    # asked for, another channel is still read as asked
    assert np.array_equal(select(data, channel=str((colour + 1) % 3)).image, rgb[:, :, (colour + 1) % 3])
    # a three-channel model takes the image whole, as any colour image
    whole = microscopy.select(data, Selection(), LIMIT, PAGES, model_channels=3)
    assert np.array_equal(whole.image, rgb)


@pytest.mark.parametrize("second", [3, 255])
def test_a_second_stain_however_faint_still_needs_a_choice(second: int) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, 2] = cv2.GaussianBlur(plane(35, np.uint8), (0, 0), 2)
    rgb[5:9, 5:9, 1] = second  # a few pixels of another stain, 3 levels above empty at the least
    data = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    assert microscopy.probe(data, LIMIT, PAGES).signal_channel is None
    with pytest.raises(SelectionError):
        select(data)


def test_a_colour_jpeg_of_one_stain_still_needs_a_choice() -> None:
    # its chroma rounding leaks the stain into the other channels: a leak is not told from a stain
    rgb = np.zeros((H * 4, W * 4, 3), np.uint8)
    rgb[:, :, 2] = cv2.resize(cv2.GaussianBlur(plane(36, np.uint8), (0, 0), 2), (W * 4, H * 4))
    data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()
    assert microscopy.probe(data, LIMIT, PAGES).signal_channel is None
    with pytest.raises(SelectionError):
        select(data)


def test_signal_channel_is_none_for_a_blank_image_and_for_grey() -> None:
    assert microscopy.signal_channel(np.zeros((4, 5, 3), np.uint16)) is None
    grey = plane(37, np.uint16)
    assert microscopy.signal_channel(np.dstack([grey] * 3)) is None
    lone = np.zeros((H, W, 3), np.float32)
    lone[:, :, 1] = plane(38, np.uint16) / 65535.0
    assert microscopy.signal_channel(lone) == 1


# --- planes -----------------------------------------------------------------------------------


def test_a_z_stack_needs_z_or_a_projection_and_says_how_many_planes() -> None:
    with pytest.raises(SelectionError) as err:
        select(IJ_ZSTACK)
    assert err.value.params == ("z",)
    assert err.value.choices["planes"] == {"Z": 10}
    assert "z=0..9" in str(err.value) and "project=max" in str(err.value)


@pytest.mark.parametrize("z", [0, 4, 9])
def test_z_selects_that_plane(z: int) -> None:
    chosen = select(IJ_ZSTACK, z=z)
    assert np.array_equal(chosen.image, Z_PLANES[z]) and chosen.z == z


def test_project_max_is_the_maximum_over_z() -> None:
    chosen = select(IJ_ZSTACK, project="max")
    assert np.array_equal(chosen.image, Z_PLANES.max(axis=0)) and chosen.projection == "max"


@pytest.mark.parametrize(
    ("choice", "params"),
    [({"z": 10}, ("z",)), ({"z": 2, "project": "max"}, ("z", "project")), ({"z": 0, "t": 1}, ("t",))],
)
def test_impossible_plane_choices_are_refused(choice: dict, params: tuple) -> None:
    with pytest.raises(SelectionError) as err:
        select(IJ_ZSTACK, **choice)
    assert err.value.params == params


def test_an_unlabelled_page_sequence_is_offered_as_z_with_a_warning() -> None:
    data = tiff(Z_PLANES[:3], photometric="minisblack")  # no metadata: axes Q
    with pytest.raises(SelectionError):
        select(data)
    chosen = select(data, z=1)
    assert np.array_equal(chosen.image, Z_PLANES[1])
    assert any("z-slices, time points or channels" in w for w in chosen.warnings)


def test_a_pillow_multipage_tiff_is_a_stack_too() -> None:
    pages = [Image.fromarray(Z_PLANES[k]) for k in range(4)]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    assert np.array_equal(select(out.getvalue(), z=3).image, Z_PLANES[3])


def test_a_hyperstack_names_every_missing_choice_and_reads_the_right_page() -> None:
    stack = np.arange(3 * 4 * 2 * H * W, dtype=np.uint16).reshape(3, 4, 2, H, W)
    data = tiff(stack, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(SelectionError) as err:
        select(data)
    assert err.value.params == ("channel", "z", "t")
    assert err.value.choices["planes"] == {"Z": 4, "T": 3}
    assert np.array_equal(select(data, channel="1", z=2, t=1).image, stack[1, 2, 1])
    assert np.array_equal(select(data, channel="0", t=2, project="max").image, stack[2, :, 0].max(axis=0))


def test_an_rgb_z_stack_needs_both_choices() -> None:
    stack = np.stack([composite(), composite()[::-1].copy()])
    data = tiff(stack, photometric="rgb")
    with pytest.raises(SelectionError) as err:
        select(data)
    assert err.value.params == ("channel", "z")
    assert np.array_equal(select(data, channel="green", z=1).image, stack[1, :, :, 1])


# --- pixel size -------------------------------------------------------------------------------


def test_imagej_calibration_is_read_in_micrometres() -> None:
    assert microscopy.probe(IJ_TWO_CHANNEL, LIMIT, PAGES).pixel_size.x_um == pytest.approx(0.65, rel=1e-6)
    nm = tiff(plane(4), imagej=True, resolution=(1 / 325, 1 / 325), metadata={"unit": "nm"})
    assert microscopy.probe(nm, LIMIT, PAGES).pixel_size == pytest.approx(
        microscopy.PixelSize(0.325, 0.325, "imagej")
    )


def test_fiji_micro_sign_escapes_are_micrometres() -> None:
    data = tiff(plane(5), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "\\u00B5m"})
    assert microscopy.probe(data, LIMIT, PAGES).pixel_size.x_um == pytest.approx(0.5)


def test_a_plain_tiff_in_centimetres_is_calibrated_and_a_print_dpi_is_not() -> None:
    cm = tiff(plane(6), resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    size = microscopy.probe(cm, LIMIT, PAGES).pixel_size
    assert size.source == "tiff" and size.x_um == pytest.approx(0.65, rel=1e-6)
    dpi = microscopy.probe(tiff(plane(6), resolution=(72, 72), resolutionunit="INCH"), LIMIT, PAGES)
    assert dpi.pixel_size is None and any("72 dpi" in w for w in dpi.warnings)
    assert microscopy.probe(tiff(plane(6)), LIMIT, PAGES).pixel_size is None


def test_pixel_size_from_the_request_overrides_the_files_and_says_so() -> None:
    chosen = select(IJ_TWO_CHANNEL, channel="1", pixel_size_um=0.5)
    assert chosen.pixel_size == microscopy.PixelSize(0.5, 0.5, "request")
    assert any("0.65" in w and "0.5" in w for w in chosen.warnings)
    assert select(tiff(plane(7)), pixel_size_um=0.3).pixel_size.x_um == 0.3


# --- z-step -----------------------------------------------------------------------------------


def ome_zstack(**sizes: object) -> bytes:
    return tiff(Z_PLANES, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65,
                                              **sizes})


@pytest.mark.parametrize(("sizes", "z_um"), [
    ({"PhysicalSizeZ": 2.5}, 2.5),  # OME's default unit is µm
    ({"PhysicalSizeZ": 2.5, "PhysicalSizeZUnit": "µm"}, 2.5),
    ({"PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"}, 0.5),
])
def test_an_ome_z_stack_gives_its_z_step_in_micrometres(sizes: dict, z_um: float) -> None:
    layout = microscopy.probe(ome_zstack(**sizes), LIMIT, PAGES)
    assert layout.pixel_size == microscopy.PixelSize(0.65, 0.65, "ome", z_um)
    assert layout.describe()["pixel_size_um"] == {"x": 0.65, "y": 0.65, "source": "ome", "z": z_um}
    assert select(ome_zstack(**sizes), z=3).pixel_size.z_um == z_um


def test_an_ome_z_step_that_is_not_a_length_is_a_note_and_one_without_x_y_is_dropped() -> None:
    def ome(attributes: str) -> ET.Element:  # parsed, as the reader parses a file's OME-XML once
        return ET.fromstring(f'<OME><Image ID="Image:0"><Pixels ID="Pixels:0" {attributes}/></Image></OME>')

    notes: list[str] = []
    size, _ = microscopy._ome_metadata(ome('PhysicalSizeX="0.5" PhysicalSizeZ="two"'), notes)
    assert size == microscopy.PixelSize(0.5, 0.5, "ome") and any("'two'" in n for n in notes)
    assert microscopy._ome_metadata(ome('PhysicalSizeZ="2.5"'), [])[0] is None


def test_an_imagej_hyperstack_gives_its_spacing_as_the_z_step() -> None:
    data = tiff(Z_PLANES, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    assert microscopy.probe(data, LIMIT, PAGES).pixel_size == microscopy.PixelSize(0.5, 0.5, "imagej", 3.0)
    nm = tiff(Z_PLANES, imagej=True, resolution=(1 / 250, 1 / 250),
              metadata={"spacing": 700, "unit": "nm", "axes": "ZYX"})
    assert microscopy.probe(nm, LIMIT, PAGES).pixel_size.z_um == 0.7  # not 0.7000000000000001


@pytest.mark.parametrize("spacing", [float("nan"), float("inf"), 0, -2.0, "thick"])
def test_an_imagej_spacing_that_is_not_a_positive_number_is_ignored(spacing: object) -> None:
    data = tiff(Z_PLANES, imagej=True, resolution=(2.0, 2.0),
                metadata={"spacing": spacing, "unit": "um", "axes": "ZYX"})
    assert microscopy.probe(data, LIMIT, PAGES).pixel_size == microscopy.PixelSize(0.5, 0.5, "imagej")


def test_an_imagej_spacing_without_a_pixel_size_gives_no_size() -> None:
    data = tiff(Z_PLANES, imagej=True, metadata={"spacing": 3.0, "axes": "ZYX"})  # unit: pixels
    assert microscopy.probe(data, LIMIT, PAGES).pixel_size is None


def test_a_file_without_a_z_step_answers_as_before() -> None:
    size = microscopy.probe(IJ_TWO_CHANNEL, LIMIT, PAGES).pixel_size
    assert size.z_um is None and size.as_dict() == {"x": 0.65, "y": 0.65, "source": "imagej"}
    cm = tiff(Z_PLANES, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    assert microscopy.probe(cm, LIMIT, PAGES).pixel_size == microscopy.PixelSize(0.65, 0.65, "tiff")
    assert "z" not in microscopy.probe(OME_THREE_CHANNEL, LIMIT, PAGES).describe()["pixel_size_um"]


def test_pixel_size_from_the_request_keeps_the_files_z_step() -> None:
    chosen = select(ome_zstack(PhysicalSizeZ=2.5), z=0, pixel_size_um=0.5)
    assert chosen.pixel_size == microscopy.PixelSize(0.5, 0.5, "request", 2.5)
    assert select(IJ_ZSTACK, z=0, pixel_size_um=0.5).pixel_size == microscopy.PixelSize(0.5, 0.5, "request")


# --- formats, limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"bigtiff": True}, {"compression": "zlib"}, {"compression": "lzw"}, {"compression": "zstd"},
     {"compression": "lzma"}, {"bigtiff": True, "compression": "zstd", "tile": (16, 16)}],
    ids=["bigtiff", "deflate", "lzw", "zstd", "lzma", "bigtiff-zstd-tiled"],
)
def test_bigtiff_and_compressed_stacks_read_the_same_planes(options: dict) -> None:
    data = tiff(Z_PLANES[:3], photometric="minisblack", metadata={"axes": "ZYX"}, **options)
    assert np.array_equal(select(data, z=2).image, Z_PLANES[2])


@pytest.mark.parametrize(
    "array",
    [plane(8, np.uint8), plane(8), plane(8).astype(np.float32) / 7, plane(8).astype(np.int32) - 900],
    ids=["uint8", "uint16", "float32", "int32"],
)
def test_single_page_tiffs_decode_exactly_as_before(array: np.ndarray) -> None:
    data = io.BytesIO()
    Image.fromarray(array).save(data, "TIFF")
    assert np.array_equal(select(data.getvalue()).image, imaging.decode(data.getvalue(), LIMIT))


def test_a_palette_tiff_falls_back_to_the_general_decoder() -> None:
    out = io.BytesIO()
    Image.fromarray(plane(9, np.uint8)).convert("P").save(out, "TIFF")
    chosen = select(out.getvalue(), channel="0")
    assert np.array_equal(chosen.image, imaging.decode(out.getvalue(), LIMIT)[:, :, 0])


def test_a_plane_over_the_pixel_limit_is_refused_from_the_header() -> None:
    with pytest.raises(imaging.ImageTooLarge):
        microscopy.select(IJ_ZSTACK, Selection(z=0), H * W - 1, PAGES)


def test_page_count_is_bounded_before_tifffile_indexes_the_pages() -> None:
    data = tiff(np.zeros((30, 8, 9), np.uint8), photometric="minisblack")
    assert microscopy.count_tiff_pages(data, 100) == 30
    with pytest.raises(microscopy.TooManyPages):
        microscopy.select(data, Selection(z=0), LIMIT, 29)


def test_a_looping_ifd_chain_is_counted_once() -> None:
    data = bytearray(tiff(np.zeros((4, 4), np.uint8)))
    first = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first)[0]
    struct.pack_into("<I", data, first + 2 + 12 * entries, first)  # next IFD = itself
    assert microscopy.count_tiff_pages(bytes(data), 10) == 1


def test_bigtiff_pages_are_counted() -> None:
    data = tiff(np.zeros((7, 8, 9), np.uint8), photometric="minisblack", bigtiff=True)
    assert microscopy.count_tiff_pages(data, 100) == 7


# --- Fiji's 8-bit images with a colour LUT: palette TIFFs of intensities ------------------------


def _palette_tiff(pixels: np.ndarray, colormap: np.ndarray, imagej: bool = True, **metadata) -> bytes:
    """A palette TIFF as Fiji saves an 8-bit image whose LUT is not grey (``imagej=False``: as any
    other writer saves an indexed-colour picture)."""
    buffer = io.BytesIO()
    kwargs = {"imagej": True, "metadata": metadata, "resolution": (1 / 0.4, 1 / 0.4)} if imagej else {}
    if imagej:
        metadata.setdefault("unit", "um")
    tifffile.imwrite(buffer, pixels, photometric="palette", colormap=colormap, **kwargs)
    return buffer.getvalue()


def _ramp(red: bool, green: bool, blue: bool, inverted: bool = False) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint16) * 257
    ramp = ramp[::-1] if inverted else ramp
    return np.stack([ramp * red, ramp * green, ramp * blue]).astype(np.uint16)


def test_a_fiji_composite_with_colour_luts_reads_its_stored_intensities() -> None:
    """Fiji saves an 8-bit composite whose channels have colour LUTs (green, magenta) as a palette
    TIFF; it was refused (415). Its stored values are the intensities, as tifffile and Fiji read
    them, with the ImageJ calibration."""
    stack = np.random.default_rng(3).integers(0, 256, (3, 2, 24, 32), dtype=np.uint8)  # ZCYX
    data = _palette_tiff(stack, _ramp(False, True, False), axes="ZCYX", spacing=1.5)
    layout = microscopy.probe(data, LIMIT, Limits())
    assert (layout.axes, layout.dtype, layout.rgb) == ("ZCYX", "uint8", False)
    assert layout.pixel_size == microscopy.PixelSize(0.4, 0.4, "imagej", 1.5)
    assert any("LUTs, for display" in w for w in layout.warnings)
    plane = microscopy.select(data, Selection(channel="1", z=2), LIMIT, Limits())
    assert np.array_equal(plane.image, stack[2, 1])


def test_an_inverted_lut_is_not_applied_and_a_pictures_palette_is() -> None:
    """A single 8-bit image with an inverted grey LUT (a real Fiji file read 255 minus its values,
    without its calibration); an ImageJ "8-bit Color" picture, whose palette jumps about, is still
    read through its colours, and a colour palette stack no ImageJ wrote is still refused."""
    pixels = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32).astype(np.uint8)
    inverted = _palette_tiff(pixels, _ramp(True, True, True, inverted=True))
    plane = microscopy.select(inverted, Selection(), LIMIT, Limits())
    assert np.array_equal(plane.image, pixels) and plane.pixel_size.source == "imagej"
    shuffled = np.random.default_rng(4).integers(0, 65536, (3, 256)).astype(np.uint16)
    picture = microscopy.probe(_palette_tiff(pixels, shuffled), LIMIT, Limits())
    assert picture.rgb and picture.axes == "YXS"
    foreign = _palette_tiff(np.stack([pixels, pixels]), _ramp(True, False, False), imagej=False)
    with pytest.raises(imaging.UnsupportedImageType, match="PALETTE"):
        microscopy.probe(foreign, LIMIT, Limits())
    # a grey ramp shows the values as they are, whoever wrote it (Cellomics): a stack of greys
    greys = _palette_tiff(np.stack([pixels, pixels]), _ramp(True, True, True), imagej=False)
    assert microscopy.probe(greys, LIMIT, Limits()).planes == {"Z": 2}


def test_imagej_spacing_is_a_z_step_for_a_stack_only() -> None:
    """ImageJ keeps its "spacing" on a time series too (a real Fiji file, HeLa cells over time):
    that is no z-step, so the answer gives none; a z-stack keeps it."""
    movie = np.zeros((3, 16, 20), np.uint16)
    for axes, z_um in (("TYX", None), ("ZYX", 2.5)):
        data = io.BytesIO()
        tifffile.imwrite(data, movie, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                         metadata={"axes": axes, "unit": "micron", "spacing": 2.5})
        layout = microscopy.probe(data.getvalue(), LIMIT, Limits())
        assert layout.pixel_size == microscopy.PixelSize(0.5, 0.5, "imagej", z_um), axes


def test_bio_formats_position_labels_are_no_channel_names() -> None:
    """Fiji keeps the label Bio-Formats gives each plane it opens (``c:1/3 - cells.tif``) when the
    image is saved again: a real re-save of a ZEN export offered the file's name three times as its
    channels' names. What follows the position is a name where the channels differ in it."""
    stack = np.zeros((3, 16, 20), np.uint8)

    def names(labels: list[str]) -> list[str | None]:
        data = io.BytesIO()
        tifffile.imwrite(data, stack, imagej=True, metadata={"axes": "CYX", "Labels": labels})
        return [c.name for c in microscopy.probe(data.getvalue(), LIMIT, Limits()).channels]

    assert names([f"c:{k}/3 - CH=3_Fluorescence_8bit.tif" for k in (1, 2, 3)]) == [None, None, None]
    assert names(["c:1/3 - DAPI", "c:2/3 - GFP", "c:3/3 - RFP"]) == ["DAPI", "GFP", "RFP"]
    assert names(["DAPI", "GFP", "RFP"]) == ["DAPI", "GFP", "RFP"]
