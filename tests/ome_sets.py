"""Multi-file OME-TIFF sets as Bio-Formats and Micro-Manager write them: one file per channel,
each carrying the same OME-XML, whose ``<TiffData>`` name the file that holds each plane by
``<UUID FileName=...>``. tifffile writes single-file OME-TIFFs only, so the XML is written here."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile


def write_channel_set(folder: Path, planes: list[np.ndarray], names: list[str],
                      file_names: list[str] | None = None, companion: str | None = None) -> list[Path]:
    """Write ``planes`` (one ``(H, W)`` uint8/uint16 plane per channel, called ``names``) as a set
    of one file per channel in ``folder``; ``file_names`` (default ``set_C<i>.ome.tif``) are the
    names the XML gives, relative to ``folder`` as a writer would put them (``../x.ome.tif`` names a
    file elsewhere). ``companion``: the XML is written once to that file (``set.companion.ome``, as
    Bio-Formats writes a set's metadata), each TIFF holding only a ``BinaryOnly`` pointer to it.
    Returns the paths written, in channel order; a name that leaves ``folder`` is written where it
    points."""
    height, width = planes[0].shape
    file_names = file_names or [f"set_C{c}.ome.tif" for c in range(len(planes))]
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in planes]
    pixel_type = {np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "uint16"}[planes[0].dtype]
    channels = "".join(f'<Channel ID="Channel:0:{c}" Name="{n}" SamplesPerPixel="1"/>'
                       for c, n in enumerate(names))
    tiff_data = "".join(
        f'<TiffData FirstC="{c}" FirstZ="0" FirstT="0" IFD="0" PlaneCount="1">'
        f'<UUID FileName="{f}">{u}</UUID></TiffData>'
        for c, (f, u) in enumerate(zip(file_names, uuids, strict=True))
    )
    paths = []
    for c, plane in enumerate(planes):
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{uuids[c]}">'
            '<Image ID="Image:0" Name="set"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
            f'Type="{pixel_type}" SizeX="{width}" SizeY="{height}" SizeC="{len(planes)}" SizeZ="1" '
            'SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5">'
            f"{channels}{tiff_data}</Pixels></Image></OME>"
        )
        if companion is not None:
            (folder / companion).write_text(xml.replace(f' UUID="{uuids[c]}"', ""))
            xml = ('<?xml version="1.0" encoding="UTF-8"?>'
                   f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{uuids[c]}">'
                   f'<BinaryOnly MetadataFile="{companion}" UUID="urn:uuid:{uuid.uuid4()}"/></OME>')
        path = (folder / file_names[c]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, plane, description=xml, metadata=None, photometric="minisblack")
        paths.append(path)
    return paths


def flim_bytes(planes: np.ndarray, bins: int) -> bytes:
    """A FLIM OME-TIFF as Bio-Formats writes one (its specification's FLIM-modulo sample):
    ``planes`` (``(C, H, W)``, C = channels × lifetime ``bins``) one page each, the OME-XML's SizeC
    counting every bin and a Modulo annotation along C saying that ``bins`` of them are lifetimes."""
    import io

    count, height, width = planes.shape
    channels = "".join(f'<Channel ID="Channel:0:{c}" SamplesPerPixel="1"/>' for c in range(count))
    tiff_data = "".join(f'<TiffData FirstC="{c}" FirstZ="0" FirstT="0" IFD="{c}" PlaneCount="1"/>'
                        for c in range(count))
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'xmlns:SA="http://www.openmicroscopy.org/Schemas/SA/2016-06">'
        '<Image ID="Image:0" Name="FLIM"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
        f'SizeX="{width}" SizeY="{height}" SizeC="{count}" SizeZ="1" SizeT="1">{channels}{tiff_data}</Pixels>'
        '<SA:AnnotationRef ID="Annotation:3"/></Image>'
        '<SA:StructuredAnnotations><SA:XMLAnnotation ID="Annotation:3" '
        'Namespace="openmicroscopy.org/omero/dimension/modulo"><SA:Value>'
        '<Modulo namespace="http://www.openmicroscopy.org/Schemas/Additions/2011-09">'
        f'<ModuloAlongC Type="lifetime" Start="1" Step="1" End="{bins}" Unit="ps"/></Modulo>'
        '</SA:Value></SA:XMLAnnotation></SA:StructuredAnnotations></OME>'
    )
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for c, plane in enumerate(planes):
            writer.write(plane, description=xml if c == 0 else None, metadata=None, photometric="minisblack")
    return buffer.getvalue()
