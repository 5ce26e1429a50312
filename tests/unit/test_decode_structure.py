"""The structure walk before decoding (service.structure) and its limits (issue 15).

Real files from OpenCV, Pillow and tifffile pass; hostile ones built byte by byte
(tests/hostile_images.py) are refused with the limit and its setting named, before any decoder
parses them; malformed structure is UndecodableImage.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from service import imaging, microscopy, structure, web
from service.settings import Settings
from service.structure import Limits, TooComplex, TooManyPages
from tests import hostile_images as hostile
from tests.fuzz_corpus import seeds

LIMIT = 10_000_000


@pytest.mark.parametrize("name", sorted(seeds()))
def test_real_files_pass_the_walk_and_decode(name: str) -> None:
    data = seeds()[name]
    structure.check(data, Limits())
    assert microscopy.probe(data, LIMIT, Limits()).width > 0


def test_a_large_real_png_in_libpng_sized_chunks_passes() -> None:
    """OpenCV (libpng) writes 8 KiB IDAT chunks: a noisy 16-bit image has hundreds of them."""
    noise = np.random.default_rng(0).integers(0, 65535, (512, 512), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", noise)
    data = buf.tobytes()
    assert data.count(b"IDAT") > 50
    structure.check(data, Limits())
    with pytest.raises(TooComplex, match="UNET_MAX_PNG_DATA_CHUNKS"):
        structure.check(data, Limits(max_png_data_chunks=50))


def test_png_chunks_besides_image_data_are_counted_up_to_the_limit() -> None:
    limits = Limits(max_image_segments=20)
    structure.check(hostile.png_chunk_bomb(18), limits)  # + IHDR = 19 chunks besides IDAT
    with pytest.raises(TooComplex, match="UNET_MAX_IMAGE_SEGMENTS") as caught:
        structure.check(hostile.png_chunk_bomb(20), limits)
    assert caught.value.limit == 20 and caught.value.slug == "image-too-complex"


def test_png_metadata_bytes_are_counted() -> None:
    data = hostile.png_chunk_bomb(3, kind=b"iTXt", payload=b"x" * 1000)
    structure.check(data, Limits(max_metadata_bytes=3000))
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        structure.check(data, Limits(max_metadata_bytes=2999))


def test_a_png_chunk_longer_than_the_file_is_malformed_not_slow() -> None:
    """libpng spent ~10 s on an IDAT claiming 2 GB in a 6 KB file before failing."""
    with pytest.raises(imaging.UndecodableImage, match="IDAT chunk at byte"):
        structure.check(hostile.png_idat_claiming(0x7FFFFFFF), Limits())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:12] + b"abCD" + d[16:], "first chunk is abCD"),
        (lambda d: d[:12] + b"I\x00DR" + d[16:], "no chunk type"),
    ],
)
def test_png_structure_that_is_not_png_is_malformed(mutate, message: str) -> None:
    with pytest.raises(imaging.UndecodableImage, match=message):
        structure.check(mutate(hostile.small_png()), Limits())


def _progressive_jpeg() -> bytes:
    rgb = np.dstack([np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)] * 3)
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    return buf.tobytes()


def test_jpeg_segments_are_counted_scans_included() -> None:
    data = _progressive_jpeg()
    scans = data.count(b"\xff\xda")
    assert scans > 3  # progressive: several scans, each after entropy-coded data
    structure.check(data, Limits())
    # every segment up to EOI is seen: with a limit below the count it is refused
    with pytest.raises(TooComplex, match="UNET_MAX_IMAGE_SEGMENTS"):
        structure.check(data, Limits(max_image_segments=scans + 2))


def test_jpeg_scans_are_counted() -> None:
    """libjpeg goes over the image once per scan: repeating the last scan multiplies its cost."""
    data = _progressive_jpeg()
    scans = data.count(b"\xff\xda")
    structure.check(data, Limits(max_jpeg_scans=scans))
    with pytest.raises(TooComplex, match="UNET_MAX_JPEG_SCANS"):
        structure.check(data, Limits(max_jpeg_scans=scans - 1))
    last = data.rfind(b"\xff\xda")
    repeated = data[:last] + data[last : data.rfind(b"\xff\xd9")] * 40 + b"\xff\xd9"
    with pytest.raises(TooComplex, match="more than 32 scans"):
        structure.check(repeated, Limits())


def test_an_exif_split_over_many_segments_counts_what_pillow_copies() -> None:
    """Pillow appends each Exif APP1 to the ones before with +=: 300 segments of 1 KB are
    300 KB of metadata but ~45 MB copied, over the 16 MiB default."""
    data = hostile.jpeg_exif_bomb(300, payload=1000)
    assert len(data) < 400_000
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        structure.check(data, Limits())
    structure.check(hostile.jpeg_exif_bomb(1, payload=60_000), Limits())  # one big Exif is fine


def test_jpeg_comment_bytes_are_metadata() -> None:
    com = b"\xff\xfe" + struct.pack(">H", 1002) + b"c" * 1000
    jpeg = hostile.small_jpeg()
    data = jpeg[:2] + com * 5 + jpeg[2:]
    assert jpeg[2:4] == b"\xff\xe0"  # OpenCV writes a JFIF APP0: metadata too
    app0 = struct.unpack_from(">H", jpeg, 4)[0] - 2
    structure.check(data, Limits(max_metadata_bytes=5000 + app0))
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        structure.check(data, Limits(max_metadata_bytes=4999 + app0))


def test_junk_between_jpeg_header_segments_is_malformed() -> None:
    """Pillow steps through stray bytes one at a time in Python: megabytes of them are refused."""
    jpeg = hostile.small_jpeg()
    structure.check(jpeg[:2] + b"\x00" * 100 + jpeg[2:], Limits())  # a little is tolerated, as libjpeg does
    with pytest.raises(imaging.UndecodableImage, match="not a marker"):
        structure.check(jpeg[:2] + b"\x00" * 1_000_000 + jpeg[2:], Limits())


def test_chained_tiff_pages_are_refused_before_tifffile_indexes_them() -> None:
    data = hostile.tiff_chained_pages(1001)
    assert structure.count_tiff(data, Limits(max_tiff_pages=1001)) == 1001
    with pytest.raises(TooManyPages, match="UNET_MAX_TIFF_PAGES") as caught:
        microscopy.probe(data, LIMIT, Limits(max_tiff_pages=1000))
    assert caught.value.slug == "too-many-pages"


def test_tiff_tags_are_counted_over_all_pages() -> None:
    pages = hostile.tiff_chained_pages(10)  # 9 entries per page
    structure.count_tiff(pages, Limits(max_tiff_tags=90))
    with pytest.raises(TooComplex, match="UNET_MAX_TIFF_TAGS"):
        microscopy.select(pages, microscopy.Selection(z=0), LIMIT, Limits(max_tiff_tags=89))


def test_bigtiff_pages_are_counted() -> None:
    out = io.BytesIO()
    tifffile.imwrite(out, np.zeros((5, 8, 8), np.uint8), bigtiff=True, photometric="minisblack")
    assert structure.count_tiff(out.getvalue(), Limits()) == 5


def test_settings_carry_every_limit_to_the_decoders() -> None:
    settings = Settings(
        max_tiff_pages=7, max_tiff_tags=8, max_image_segments=9, max_png_data_chunks=10,
        max_metadata_bytes=11, max_jpeg_scans=12,
    )
    assert settings.decode_limits() == Limits(7, 8, 9, 10, 11, 12)
    assert Settings().decode_limits() == Limits()  # the documented defaults are the settings' defaults


# --- any decoder error is an ImageError ------------------------------------------------------------


def test_pillow_header_errors_are_undecodable_not_type_errors() -> None:
    """Pillow's page count raised TypeError on a TIFF whose second IFD lacks ImageWidth."""
    data = hostile.tiff_second_page_without_width()
    with pytest.raises(imaging.UndecodableImage, match="TypeError"):
        imaging.probe(data)


def test_a_page_without_a_width_is_undecodable_not_an_empty_plane() -> None:
    """It decoded to an (8, 8, 0) plane that failed later, deep in the pipeline."""
    data = hostile.tiff_pages_second_without_width()
    assert microscopy.select(data, microscopy.Selection(z=0), LIMIT, Limits()).image.shape == (8, 8)
    with pytest.raises(imaging.UndecodableImage, match="no plane"):
        microscopy.select(data, microscopy.Selection(z=1), LIMIT, Limits())
    with pytest.raises(imaging.UndecodableImage):
        microscopy.select(data, microscopy.Selection(project="max"), LIMIT, Limits())


def test_a_projection_stops_between_planes_when_asked() -> None:
    out = io.BytesIO()
    tifffile.imwrite(out, np.zeros((6, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(microscopy.DecodeCancelled, match="after 3 of 6 planes"):
        microscopy.select(out.getvalue(), microscopy.Selection(project="max"), LIMIT, Limits(),
                          should_stop=should_stop)


def test_the_preview_refuses_hostile_files_the_same_way() -> None:
    with pytest.raises(TooComplex):
        web.render_preview(hostile.png_chunk_bomb(1001), LIMIT, limits=Limits())
    with pytest.raises(imaging.UndecodableImage):
        web.render_preview(
            hostile.tiff_pages_second_without_width(), LIMIT, microscopy.Selection(z=1), Limits()
        )


def test_the_older_page_limit_argument_still_works() -> None:
    assert microscopy.count_tiff_pages(hostile.tiff_chained_pages(30), 100) == 30
    with pytest.raises(TooManyPages):
        microscopy.probe(hostile.tiff_chained_pages(30), LIMIT, 29)
    out = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out, format="PNG")
    assert microscopy.probe(out.getvalue(), LIMIT, 10).format == "PNG"


@pytest.mark.parametrize("bigtiff", [False, True])
def test_a_tiff_tag_holding_more_than_the_metadata_limit_is_refused_before_tifffile_reads_it(
    bigtiff: bool, tmp_path
) -> None:
    """tifffile reads a page's tag values when it parses the page: a 700 MB ImageDescription read
    by path (no upload limit there) took 2.9 GB (a hostile-input audit)."""
    from service import slide_files

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((8, 8), np.uint8), description="x" * 5000, bigtiff=bigtiff,
                     metadata=None)
    data = buffer.getvalue()
    assert structure.count_tiff(data, Limits(max_metadata_bytes=10_000)) == 1
    with pytest.raises(TooComplex, match="tag 270 holds 5,001 bytes"):
        structure.count_tiff(data, Limits(max_metadata_bytes=4_000))
    path = tmp_path / "big-description.tif"
    path.write_bytes(data)
    with pytest.raises(TooComplex, match="tag 270"):
        slide_files.open_slide(path, max_pixels=10**8, limits=Limits(max_metadata_bytes=4_000))
    # a count that puts the value past the file's end (a camera's corrupt tag): tifffile skips the
    # tag and reads the image, and so is it counted here
    entry = data.index(struct.pack("<HH", 270, 2))
    width = 8 if bigtiff else 4
    for count in (10**9, 2**(8 * width) - 1):  # the largest: a product that must not wrap to a fit
        corrupt = data[:entry + 4] + count.to_bytes(width, "little") + data[entry + 4 + width:]
        assert structure.count_tiff(corrupt, Limits(max_metadata_bytes=4_000)) == 1
