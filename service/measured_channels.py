"""Column names of the channels each object is measured in besides the one segmented (``measure=``).

One place for every table that carries them — ``POST /segment``'s objects (``service.objects``), a
slide's streamed table (``service.object_stream``) and a stack's 3-D one (``service.zstack``) — and
free of NumPy, so the batch client's light paths may import it.
"""

from __future__ import annotations

from collections.abc import Sequence


def channel_columns(key: str) -> tuple[str, str]:
    """The two columns of a channel measured (``measure=``), ``key`` naming it (:func:`channel_key`):
    the mean and the sum of its intensity over each object's pixels, in the file's units."""
    return f"mean_intensity_{key}", f"integrated_intensity_{key}"


def channel_key(index: int, name: str | None) -> str:
    """A column-safe name for channel ``index``: its name with anything but letters, digits and
    ``_`` made ``_`` (``Alexa 488`` → ``Alexa_488``), or ``c{index}`` when it has none."""
    cleaned = "_".join(part for part in "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch == "_" else " " for ch in (name or "")
    ).split())
    return cleaned or f"c{index}"


def channel_keys(channels: list[tuple[int, str | None]]) -> list[str]:
    """:func:`channel_key` of each ``(index, name)``, made unique: where two names clean to one
    key (``GFP`` twice, ``A-1`` and ``A 1``), each of them is prefixed with ``c{index}_``."""
    keys = [channel_key(index, name) for index, name in channels]
    return [f"c{index}_{key}" if keys.count(key) > 1 and key != f"c{index}" else key
            for (index, _), key in zip(channels, keys, strict=True)]


#: Bytes of admission's budget per pixel (the pipeline's working set, ``service.admission``), against
#: the 4 bytes a measured channel's pixel takes at most (float32; 16-bit files: 2).
_ADMITTED_BYTES_PER_PIXEL, _MEASURED_BYTES_PER_PIXEL = 48, 4


def admitted_for_bytes(nbytes: int) -> int:
    """Pixels of admission's budget that weigh ``nbytes`` of working memory beside the pipeline's."""
    return nbytes // _ADMITTED_BYTES_PER_PIXEL


def admitted_extra(channels: int, pixels: int, copies: int = 1) -> int:
    """Pixels of admission's budget to add for ``channels`` measured planes of ``pixels`` each,
    held ``copies`` times at once: what they weigh beside the pipeline's own working set."""
    return channels * copies * pixels * _MEASURED_BYTES_PER_PIXEL // _ADMITTED_BYTES_PER_PIXEL


#: Columns of the cell around each nucleus (``expand=``): its area and its cytoplasm's (the cell
#: less its nucleus), in px; with a pixel size the cell's area in µm² too.
CELL_COLUMNS = ("cell_area", "cytoplasm_area")
CELL_UM_COLUMNS = ("cell_area_um2",)


def cytoplasm_columns(key: str) -> tuple[str, str]:
    """The two columns of a measured channel over each cell's cytoplasm (``expand=``)."""
    return f"mean_intensity_cytoplasm_{key}", f"integrated_intensity_cytoplasm_{key}"


def background_column(key: str) -> str:
    """The column of a measured channel's local background around each object (``background_ring=``,
    ``service.background``): the median of its ring, in the file's units."""
    return f"background_{key}"


def channel_corrected_columns(key: str) -> tuple[str, str]:
    """A measured channel's two columns over the nucleus less its local background: the mean less
    the background, and the sum less area × background (Fiji's corrected total fluorescence)."""
    return f"mean_intensity_corrected_{key}", f"integrated_intensity_corrected_{key}"


def cytoplasm_corrected_columns(key: str) -> tuple[str, str]:
    """:func:`channel_corrected_columns` over each cell's cytoplasm (``expand=``)."""
    return f"mean_intensity_cytoplasm_corrected_{key}", f"integrated_intensity_cytoplasm_corrected_{key}"


def extra_columns(
    channel_keys: Sequence[str], cells: bool = False, calibrated: bool = False, background: bool = False
) -> list[str]:
    """The columns after an object's own, in table order: the cell's (``cells``), then per measured
    channel its two over the nucleus and, with cells, its two over the cytoplasm; with
    ``background`` (``background_ring=``), then its background and the corrected two (and two more
    over the cytoplasm with cells)."""
    columns = [*CELL_COLUMNS, *(CELL_UM_COLUMNS if calibrated else ())] if cells else []
    for key in channel_keys:
        columns += [*channel_columns(key), *(cytoplasm_columns(key) if cells else ())]
        if background:
            columns += [background_column(key), *channel_corrected_columns(key),
                        *(cytoplasm_corrected_columns(key) if cells else ())]
    return columns


def cells_admitted(pixels: int) -> int:
    """Pixels of admission's budget for cells grown around the objects of an image of ``pixels``
    (``expand=``): a distance transform of it with its nearest-object indices and the cell labels,
    ~28 bytes a pixel while the table is made."""
    return pixels * 28 // _ADMITTED_BYTES_PER_PIXEL
