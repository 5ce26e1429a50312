"""Every output carries a ``Content-Disposition`` file name derived from the upload's, made safe."""

from __future__ import annotations

import io
import zipfile

import pytest

from service.filenames import content_disposition, output_name, request_filename, upload_stem
from tests.api import _images as im
from tests.server import Server

TIFF = im.tiff(im.blobs(64, 80, seed=3))


def _multipart(server: Server, filename: str, **params: str):
    return server.client.post(
        "/segment", params=params, files={"file": (filename, TIFF, "image/tiff")}
    )


@pytest.mark.parametrize(
    ("params", "accept", "expected"),
    [
        ({"output": "mask"}, None, "cells_mask.png"),
        ({"output": "probability"}, None, "cells_probability.png"),
        ({"output": "labels"}, None, "cells_labels.png"),
        ({"output": "overlay"}, None, "cells_overlay.png"),
        ({"output": "objects"}, None, "cells_objects.csv"),
        ({"output": "objects"}, "application/json", "cells_objects.json"),
        ({"output": "geojson"}, None, "cells.geojson"),
        ({"output": "rois"}, None, "cells_rois.zip"),
    ],
)
def test_each_output_is_named_after_the_upload(
    server: Server, params: dict, accept: str | None, expected: str
) -> None:
    headers = {"Accept": accept} if accept else {}
    r = server.client.post(
        "/segment", params=params, headers=headers, files={"file": ("cells.tif", TIFF, "image/tiff")}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="{expected}"'


def test_a_hostile_name_loses_its_path_quotes_and_control_characters(server: Server) -> None:
    r = _multipart(server, '..\\..\\Windows/evil"name;\x7f.tif')
    assert r.status_code == 200, r.text
    # Clients send a quote in a multipart file name as %22 (HTML's rule, httpx's and browsers'):
    # the '%' is not kept either.
    assert r.headers["content-disposition"] == 'attachment; filename="evil_22name_mask.png"'


def test_a_non_ascii_name_gets_an_ascii_fallback_and_filename_star(server: Server) -> None:
    r = _multipart(server, "Zellkerne München.tif")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"Zellkerne Munchen_mask.png\"; "
        "filename*=UTF-8''Zellkerne%20M%C3%BCnchen_mask.png"
    )


def test_a_raw_body_is_named_by_its_own_content_disposition_or_image(server: Server) -> None:
    raw = {"Content-Type": "image/tiff"}
    plain = server.client.post("/segment", content=TIFF, headers=raw)
    assert plain.headers["content-disposition"] == 'attachment; filename="image_mask.png"'
    named = server.client.post(
        "/segment", content=TIFF, headers={**raw, "Content-Disposition": 'attachment; filename="plate 3.tif"'}
    )
    assert named.headers["content-disposition"] == 'attachment; filename="plate 3_mask.png"'


def test_batch_zip_is_named_after_its_one_file_or_generically(server: Server) -> None:
    one = server.client.post("/segment/batch", files=[("files", ("well A1.tif", TIFF, "image/tiff"))])
    assert one.status_code == 200, one.text
    assert one.headers["content-disposition"] == 'attachment; filename="well A1_mask.zip"'
    two = server.client.post(
        "/segment/batch",
        params={"output": "labels"},
        files=[("files", ("a.tif", TIFF, "image/tiff")), ("files", ("b.tif", TIFF, "image/tiff"))],
    )
    assert two.status_code == 200, two.text
    assert two.headers["content-disposition"] == 'attachment; filename="segmentation_labels.zip"'
    assert "a.png" in zipfile.ZipFile(io.BytesIO(two.content)).namelist()


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("cells.tif", "cells"),
        ("/data/run 1/cells.ome.tif", "cells.ome"),
        ("C:\\Users\\me\\cells.png", "cells"),
        (".bashrc", "bashrc"),
        ("....", "image"),
        ("", "image"),
        (None, "image"),
        ("a\r\nSet-Cookie: x.png", "a Set-Cookie_ x"),
        ("x" * 300 + ".png", "x" * 100),
    ],
)
def test_upload_stem(name: str | None, stem: str) -> None:
    assert upload_stem(name) == stem


def test_header_values_never_hold_quotes_or_control_characters() -> None:
    for name in ['a"b.tif', "a\\b.tif", "a\x00\x1b\x85b.tif", "\u2028.tif", "日本語.tif"]:
        value = content_disposition(output_name(name, "mask", "image/png"))
        fallback = value.split('filename="', 1)[1].split('"', 1)[0]
        assert all(32 <= ord(c) < 127 for c in value), value
        assert '"' not in fallback and "\\" not in fallback and fallback.endswith("mask.png"), value


def test_request_filename_reads_rfc_2231_names_and_ignores_junk() -> None:
    assert request_filename("attachment; filename*=UTF-8''Zellkern%C3%BC.tif") == "Zellkernü.tif"
    assert request_filename("attachment; filename=plain.tif") == "plain.tif"
    assert request_filename("nonsense") is None and request_filename(None) is None
