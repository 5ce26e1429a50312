"""A slide's segmentation written as OME-Zarr, band by band, with a multiscale pyramid.

The windowed pipeline (issue 16) finishes full-width row bands top to bottom; this module stores
them without ever holding a whole output: :class:`OmeZarrWriter` buffers one row of chunks
(``chunk`` rows × the width, per output), writes it when full together with its share of every
pyramid level (2× smaller rows each), so :meth:`~OmeZarrWriter.finish` reads nothing back.

Layout (OME-NGFF 0.4 on Zarr v2; metadata written by ``ome_zarr.writer``)::

    result.ome.zarr/            image: foreground probability, uint8 (0 = 0.0, 255 = 1.0)
        0/ 1/ 2/ ...            levels, 2× smaller each (2 × 2 mean), (y, x), chunks ``chunk``²
        labels/
            nuclei/ 0/ 1/ ...   image-label, uint32 object ids (0 = background; an object's id
                                is the objects table's ``id``), levels by stride (nearest)
            mask/   0/ 1/ ...   image-label, uint8 0/255 (the service's mask), levels by stride
            cells/  0/ 1/ ...   with ``expand=`` only: image-label, uint32, each nucleus's cell
                                under the nucleus's id, levels by stride

Why these choices:

- **NGFF 0.4 on Zarr v2**, not ome-zarr's default 0.5 on Zarr v3: the Bio-Formats tool chain
  (QuPath and Fiji through Bio-Formats, bioformats2raw, NGFF-Converter) reads and writes 0.4 /
  Zarr v2 only (2026); napari (ome-zarr ≥ 0.12), MoBIE, webknossos and neuroglancer read both.
- **Probability as uint8**: a quarter of float32's bytes before compression, and the same
  resolution as the 8-bit probability PNG the service already returns (steps of 1/255, well
  under the model's own calibration error); the viewers above all display uint8, and none of
  the Bio-Formats ones reads float16. Measured on a 2048² result: see docs/slides.md.
- **Blosc zstd, level 1** (3.5× faster than level 5 for 14 % more bytes; the shuffle chosen per
  output by size), chunks of 1024² (viewers fetch one
  chunk per screen tile; 1024² uint32 labels are 4 MiB raw, quick to fetch and decode).
- **No object table inside the store**: NGFF's tables are not yet a released spec; the table
  is streamed to CSV beside it (:mod:`service.object_table`).

Memory: ``chunk × width × (1 + 4 + 1)`` bytes of row buffers (6 MiB per 1000 px of width at
``chunk=1024``: 192 MiB for a 32768-px-wide slide, 586 MiB at 100,000 px) plus a few chunks
while the pyramid is built (4 more bytes a column with the cells). Take a smaller ``chunk`` for
very wide slides.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: What can be written (the cells only with ``expand=``), and the dtype each is stored in.
OUTPUTS = ("mask", "labels", "probability", "cells")
DEFAULT_OUTPUTS = ("mask", "labels", "probability")
_DTYPES = {"mask": np.dtype(np.uint8), "labels": np.dtype(np.uint32), "probability": np.dtype(np.uint8),
           "cells": np.dtype(np.uint32)}
#: Where each output lives inside the store: the probability is the image at the root; without
#: it the mask is (NGFF labels belong to an image), and is not repeated under labels/.
_PATHS = {"probability": "", "labels": "labels/nuclei", "mask": "labels/mask", "cells": "labels/cells"}
_PATHS_NO_PROBABILITY = {"labels": "labels/nuclei", "mask": "", "cells": "labels/cells"}
#: Rows converted at a time when a band is buffered (bounds the float temporaries).
_STRIP = 64
#: The pyramid stops at the first level whose larger side is at most this many pixels.
SMALLEST_LEVEL = 1024


def level_shapes(shape: tuple[int, int], levels: int | None = None) -> list[tuple[int, int]]:
    """``(H, W)`` of each level: 2× smaller (rounded up) each, down to ≤ :data:`SMALLEST_LEVEL`
    px on the larger side, or exactly ``levels`` levels."""
    shapes = [shape]
    while (len(shapes) < levels) if levels is not None else (max(shapes[-1]) > SMALLEST_LEVEL):
        h, w = shapes[-1]
        if levels is None and h == 1 and w == 1:
            break
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def downsample(block: np.ndarray, mean: bool) -> np.ndarray:
    """One 2× step: ``block[::2, ::2]`` (labels, mask: no new values), or the mean of each 2 × 2
    (probability; an odd last row/column averages the pixels it has), rounded to the dtype."""
    if not mean:
        return block[::2, ::2]
    h, w = block.shape
    padded = np.pad(block, ((0, h % 2), (0, w % 2)), mode="edge").astype(np.float32)
    sums = padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]
    return np.rint(sums / 4).astype(block.dtype)


def downsample_rows(block: np.ndarray, mean: bool) -> np.ndarray:
    """:func:`downsample` of a wide block, :data:`_STRIP` × 2 rows at a time: the mean's float32
    temporaries stay a few MB whatever the width (pairs of rows never straddle two strips)."""
    if not mean or block.shape[0] <= 2 * _STRIP:
        return downsample(block, mean)
    strips = range(0, block.shape[0], 2 * _STRIP)
    return np.concatenate([downsample(block[y : y + 2 * _STRIP], mean) for y in strips])


class OmeZarrWriter:
    """Writes full-width row bands, top to bottom, into an OME-Zarr store; see the module doc.

    Args:
        path: the store's folder (``.ome.zarr`` by convention); must not exist unless ``overwrite``.
        shape: ``(H, W)`` of the input grid.
        pixel_size_um: µm per pixel, one number or ``(x, y)``; None: the axes get no unit and
            the scale is in pixels.
        chunk: chunk edge in pixels on every level (and the rows buffered before a write).
        outputs: which of ``mask``, ``labels``, ``probability``, ``cells`` to store. Without
            ``probability`` the mask is also the root image (NGFF labels belong to an image).
        levels: number of pyramid levels; None: down to ≤ 1024 px on the larger side.
        overwrite: replace what is at ``path`` (a job re-run), else FileExistsError.
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        *,
        pixel_size_um: float | tuple[float, float] | None = None,
        chunk: int = 1024,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        levels: int | None = None,
        overwrite: bool = False,
    ) -> None:
        import zarr
        from numcodecs import Blosc

        height, width = (int(n) for n in shape)
        if height < 1 or width < 1:
            raise ValueError(f"shape must be positive, got {shape}")
        unknown = set(outputs) - set(OUTPUTS)
        if unknown or not outputs:
            raise ValueError(f"outputs must be among {OUTPUTS}, got {tuple(outputs)}")
        if "probability" not in outputs and "mask" not in outputs:
            raise ValueError("outputs need the probability or the mask: NGFF labels belong to an image")
        if chunk < 16:
            raise ValueError(f"chunk must be at least 16 px, got {chunk}")
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.path = Path(path)
        self.shape = (height, width)
        self.chunk = chunk
        self.outputs = tuple(o for o in OUTPUTS if o in outputs)
        self.levels = level_shapes(self.shape, levels)
        if pixel_size_um is None:
            self.pixel_size: tuple[float, float] | None = None
        elif isinstance(pixel_size_um, (int, float)):
            self.pixel_size = (float(pixel_size_um), float(pixel_size_um))
        else:
            self.pixel_size = (float(pixel_size_um[0]), float(pixel_size_um[1]))

        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
            if self.path.is_dir():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        self._root = zarr.open_group(self.path, mode="w", zarr_format=2)
        # Blosc zstd level 1: on a 2048² result of 2,867 nuclei (docs/slides.md) 2.44 MB for the
        # three outputs in 78 ms of encoding, against 2.14 MB in 273 ms at level 5 and 3.44 MB
        # in 34 ms with lz4 — the slide's time is the model's, and 1 GP at level 5 would add
        # about a minute of encoding. Shuffle per output, the smallest: labels unshuffled (byte
        # shuffle +50 %), mask bit-shuffled (-30 %), probability one byte (shuffle moot).
        compressors = {
            "probability": Blosc(cname="zstd", clevel=1, shuffle=Blosc.NOSHUFFLE),
            "labels": Blosc(cname="zstd", clevel=1, shuffle=Blosc.NOSHUFFLE),
            "cells": Blosc(cname="zstd", clevel=1, shuffle=Blosc.NOSHUFFLE),
            "mask": Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE),
        }
        self._arrays: dict[str, list[Any]] = {}
        self._paths = _PATHS if "probability" in self.outputs else _PATHS_NO_PROBABILITY
        for name in self.outputs:
            where = self._paths[name]
            group = self._root.require_group(where) if where else self._root
            self._arrays[name] = [
                group.create_array(
                    str(k), shape=(h, w), chunks=(min(chunk, h), min(chunk, w)),
                    dtype=_DTYPES[name], compressors=compressors[name], fill_value=0,
                )
                for k, (h, w) in enumerate(self.levels)
            ]
        # one row of chunks per output, filled by write_rows, written when full
        self._buffers = {name: np.zeros((min(chunk, height), width), _DTYPES[name]) for name in self.outputs}
        self._filled = 0  # rows in the buffers
        # levels [1, this) are written as level 0's rows are flushed: those whose rows start on an
        # even row of the level above, i.e. while 2^k divides the chunk (the rest at finish())
        self._incremental_levels = 1
        while self._incremental_levels < len(self.levels) and chunk % (2**self._incremental_levels) == 0:
            self._incremental_levels += 1
        self._next = 0  # the next input row expected
        self._finished = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by the row buffers (what the writer keeps between bands)."""
        return sum(b.nbytes for b in self._buffers.values())

    @property
    def rows_written(self) -> int:
        return self._next

    def write_rows(
        self,
        y0: int,
        mask: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        probability: np.ndarray | None = None,
        cells: np.ndarray | None = None,
    ) -> None:
        """Store the rows ``[y0, y0 + h)``: ``mask`` ``(h, W)`` uint8 0/255, ``labels`` and
        ``cells`` ``(h, W)`` non-negative int, ``probability`` ``(h, W)`` float in [0, 1]. Bands
        come in order, top to bottom, without gaps; each output the writer was made for must be
        given."""
        if self._finished:
            raise RuntimeError("the store is finished")
        if y0 != self._next:
            raise ValueError(f"rows must come in order: expected a band at row {self._next}, got {y0}")
        given = {"mask": mask, "labels": labels, "probability": probability, "cells": cells}
        bands = {}
        height = None
        for name in self.outputs:
            band = given[name]
            if band is None:
                raise ValueError(f"this store holds {name}: pass it with every band")
            if band.ndim != 2 or band.shape[1] != self.shape[1]:
                raise ValueError(f"{name} band must be (h, {self.shape[1]}), got {band.shape}")
            if height is not None and band.shape[0] != height:
                raise ValueError("the outputs of one band must have the same height")
            height = band.shape[0]
            bands[name] = band
        assert height is not None
        if y0 + height > self.shape[0]:
            raise ValueError(f"band [{y0}, {y0 + height}) runs past the image's {self.shape[0]} rows")
        done = 0
        while done < height:
            take = min(height - done, self._buffers[self.outputs[0]].shape[0] - self._filled)
            for name, band in bands.items():
                # in strips: a conversion's float temporaries stay at _STRIP rows, not the band's
                for row in range(0, take, _STRIP):
                    n = min(_STRIP, take - row)
                    target = self._buffers[name][self._filled + row : self._filled + row + n]
                    _store(name, band[done + row : done + row + n], target)
            self._filled += take
            done += take
            self._next += take
            if self._filled == self._buffers[self.outputs[0]].shape[0] or self._next == self.shape[0]:
                self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        top = self._next - self._filled
        for name in self.outputs:
            rows = self._buffers[name][: self._filled]
            arrays = self._arrays[name]
            arrays[0][top : self._next] = rows
            # The levels below, from these rows while they are here: no pass reading level 0 back
            # at the end. A level's rows start on an even row of the level above while 2^k divides
            # the chunk (every flush starts on a chunk row), so each 2 × 2 block is the one
            # finish() would take; the rows of a level's chunk row arrive in 2^k parts, which zarr
            # merges into the chunk.
            y = top
            for k in range(1, self._incremental_levels):
                rows = downsample_rows(rows, mean=name == "probability")
                y //= 2
                arrays[k][y : y + rows.shape[0]] = rows
        self._filled = 0

    def finish(self) -> dict[str, Any]:
        """Build the pyramid and write the OME-NGFF metadata; returns a summary (levels, bytes).

        Raises ValueError when fewer rows than the image's were written (an unfinished store
        stays without metadata, so no reader takes it for a result)."""
        if self._finished:
            raise RuntimeError("the store is finished")
        if self._next != self.shape[0]:
            raise ValueError(f"only {self._next} of {self.shape[0]} rows were written")
        self._flush()
        self._buffers.clear()
        for name in self.outputs:
            arrays = self._arrays[name]
            for k in range(self._incremental_levels, len(arrays)):
                _downsample_level(arrays[k - 1], arrays[k], self.chunk, mean=name == "probability")
        self._write_metadata()
        self._finished = True
        return {
            "path": str(self.path),
            "levels": [list(s) for s in self.levels],
            "outputs": list(self.outputs),
            "bytes": sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()),
        }

    # --- metadata ------------------------------------------------------------------------

    def _axes(self) -> list[dict[str, str]]:
        unit = {"unit": "micrometer"} if self.pixel_size is not None else {}
        return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]

    def _datasets(self, mean: bool) -> list[dict[str, Any]]:
        sx, sy = self.pixel_size or (1.0, 1.0)
        datasets = []
        for k in range(len(self.levels)):
            f = 2**k
            transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [_tidy(sy * f), _tidy(sx * f)]}]
            if mean and k:
                # a mean over f × f pixels sits at their centre: (f - 1) / 2 level-0 pixels in
                shift = [_tidy(sy * (f - 1) / 2), _tidy(sx * (f - 1) / 2)]
                transforms.append({"type": "translation", "translation": shift})
            datasets.append({"path": str(k), "coordinateTransformations": transforms})
        return datasets

    def _write_metadata(self) -> None:
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

        fmt = FormatV04()
        root = next(name for name, where in self._paths.items() if where == "" and name in self.outputs)
        if root == "probability":
            image_meta = {
                "description": "foreground probability × 255 as uint8 (0 = 0.0, 255 = 1.0)",
                "method": "2 × 2 mean per level",
                "omero": {
                    "channels": [{
                        "label": "foreground probability (× 255)", "color": "FFFFFF", "active": True,
                        "window": {"min": 0, "max": 255, "start": 0, "end": 255},
                    }],
                    "rdefs": {"model": "greyscale"},
                },
            }
            write_multiscales_metadata(self._root, self._datasets(mean=True), fmt=fmt, axes=self._axes(),
                                       name="probability", metadata=image_meta)
        elif root == "mask":
            write_multiscales_metadata(
                self._root, self._datasets(mean=False), fmt=fmt, axes=self._axes(), name="mask",
                metadata={"description": "foreground mask, 0/255", "method": "stride (nearest) per level"},
            )
        label_paths = [(name, where) for name, where in self._paths.items() if where and name in self.outputs]
        if label_paths:
            labels_group = self._root.require_group("labels")
            for name, where in label_paths:
                label_name = where.split("/")[-1]
                group = labels_group[label_name]
                write_multiscales_metadata(group, self._datasets(mean=False), fmt=fmt, axes=self._axes(),
                                           name=label_name, metadata={"method": "stride (nearest) per level"})
                if name == "mask":
                    colors = [{"label-value": 255, "rgba": [255, 255, 0, 255]}]
                    properties = [{"label-value": 255, "class": "nucleus"}]
                else:
                    colors, properties = None, None
                write_label_metadata(labels_group, label_name, colors=colors, properties=properties, fmt=fmt,
                                     source={"image": "../../"})


def _tidy(value: float) -> float:
    """0.9750000000000001 → 0.975: the digits a calibration has, in the JSON people read."""
    return float(f"{value:.10g}")


def _store(name: str, band: np.ndarray, out: np.ndarray) -> None:
    """Write ``band`` into ``out`` as it is stored: probability → round(p × 255) uint8, labels and
    cells → uint32, mask → 0/255."""
    if name == "probability":
        scaled = np.clip(band, 0.0, 1.0, dtype=np.float32)
        scaled *= 255.0
        np.rint(scaled, out=scaled)
        out[...] = scaled
    elif name in ("labels", "cells"):
        out[...] = band
    else:
        np.greater(band, 0, out=out)
        out *= np.uint8(255)


def _downsample_level(source: Any, target: Any, chunk: int, mean: bool) -> None:
    """Fill ``target`` (one level) from ``source`` (the level above), one target chunk at a time:
    each reads the 2·chunk × 2·chunk source block under it (four chunks when aligned)."""
    height, width = target.shape
    ch, cw = target.chunks
    for y0 in range(0, height, ch):
        for x0 in range(0, width, cw):
            y1, x1 = min(y0 + ch, height), min(x0 + cw, width)
            block = source[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
            target[y0:y1, x0:x1] = downsample(block, mean)
