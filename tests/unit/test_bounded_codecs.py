"""``service.bounded_codecs``: Zarr chunks decode no further than a chunk may hold (a hostile-input
audit's store of four 1.5 MB gzip chunks inflating to 1.5 GB each took a server to 11.9 GB)."""

from __future__ import annotations

import subprocess
import sys

import numcodecs
import numpy as np
import pytest
import zarr

from service import bounded_codecs, slide_files
from tests.server import REPO

LIMIT = slide_files.MAX_CHUNK_BYTES  # what slide_files installs: the process shares one bound
CODECS = [numcodecs.Zlib(), numcodecs.GZip(), numcodecs.Zstd(), numcodecs.Blosc(), numcodecs.LZ4(),
          numcodecs.BZ2(), numcodecs.LZMA()]


@pytest.fixture(autouse=True)
def bounded() -> None:
    bounded_codecs.install(LIMIT)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.codec_id)
def test_a_chunk_within_the_limit_decodes_as_before_and_one_past_it_is_refused(codec) -> None:
    chunk = np.arange(300_000, dtype=np.uint16).tobytes()
    assert bytes(codec.decode(codec.encode(chunk))) == chunk
    out = np.empty(len(chunk), np.uint8)
    codec.decode(codec.encode(chunk), out=out)  # into a buffer, as zarr may ask
    assert out.tobytes() == chunk
    bomb = codec.encode(bytes(LIMIT + 4096))  # zeros: a few kB that inflate past the limit
    assert len(bomb) < LIMIT // 100
    with pytest.raises(bounded_codecs.ChunkTooLarge, match="decompression bomb"):
        codec.decode(bomb)


def test_a_store_whose_chunk_inflates_past_the_limit_is_a_400_not_gigabytes(tmp_path) -> None:
    # In a process of its own: the decoders are bounded process-wide once installed, and the bound
    # under test is the one reading a store installs, not this module's fixture.
    path = tmp_path / "bomb.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    array = root.create_array("0", shape=(256, 256), chunks=(128, 128), dtype="uint16",
                              compressors=numcodecs.GZip())
    array[:] = 7
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                              {"name": "x", "type": "space"}],
                                  "datasets": [{"path": "0", "coordinateTransformations": [
                                      {"type": "scale", "scale": [1.0, 1.0]}]}]}]
    (path / "0" / "0.0").write_bytes(numcodecs.GZip().encode(bytes(2 * LIMIT)))  # 64 MiB of zeros
    script = (
        "import resource, sys\n"
        "from service import slide_files\n"
        "from service.microscopy import Selection\n"
        f"with slide_files.open_slide({str(path)!r}, Selection(), max_pixels=10**8, limits=100) as source:\n"
        "    assert (source.read(128, 256, 128, 256) == 7).all()\n"
        "    try:\n"
        "        source.read(0, 64, 0, 64)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, 'MiB')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    said = done.stdout + done.stderr
    assert "UndecodableImage" in done.stdout and "decompression bomb" in done.stdout, said


def test_a_gzip_chunk_followed_by_zero_padding_decodes_as_gzip_reads_it() -> None:
    chunk = np.arange(1000, dtype=np.uint16).tobytes()
    assert bytes(numcodecs.GZip().decode(numcodecs.GZip().encode(chunk) + bytes(64))) == chunk
