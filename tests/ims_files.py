"""Imaris (``.ims``) files written as Imaris writes them, with h5py (the test side may use libhdf5;
the service reads with pyfive): ``DataSet/ResolutionLevel r/TimePoint t/Channel c/Data`` padded to
whole chunks, a second, halved resolution level, ``DataSetInfo`` with the image's size and extents
and the channels' names, every attribute text as an array of one-byte strings."""

from __future__ import annotations

import io

import numpy as np


def _text(value: str) -> np.ndarray:
    return np.frombuffer(value.encode(), dtype="S1")


def ims_bytes(
    stack: np.ndarray,
    voxel_um: tuple[float, float, float] | None = (0.5, 0.5, 2.0),
    names: list[str] | None = None,
    chunks: tuple[int, int, int] | None = (4, 32, 32),
    compression: str | None = "gzip",
    shuffle: bool = True,
    fletcher32: bool = False,
    unit: str = "um",
    levels: int = 2,
    libver: str = "earliest",
) -> bytes:
    """An Imaris file of ``stack`` (``T × C × Z × Y × X``); ``chunks=None`` stores each dataset
    contiguously (``compression`` then None)."""
    import h5py

    times, channels, depth, height, width = stack.shape
    out = io.BytesIO()
    with h5py.File(out, "w", libver=(libver, "latest")) as f:
        for key, value in {"ImarisDataSet": "ImarisDataSet", "ImarisVersion": "5.5.0",
                           "DataSetDirectoryName": "DataSet", "DataSetInfoDirectoryName": "DataSetInfo",
                           "ThumbnailDirectoryName": "Thumbnail"}.items():
            f.attrs[key] = _text(value)
        f.attrs["NumberOfDataSets"] = np.array([1], np.uint32)
        image = f.create_group("DataSetInfo/Image")
        for key, value in {"X": width, "Y": height, "Z": depth, "Noc": channels}.items():
            image.attrs[key] = _text(str(value))
        image.attrs["Unit"] = _text(unit)
        if voxel_um is not None:
            for axis, (count, step) in enumerate(zip((width, height, depth), voxel_um, strict=True)):
                image.attrs[f"ExtMin{axis}"] = _text("0")
                image.attrs[f"ExtMax{axis}"] = _text(f"{count * step:.6f}")
        for c in range(channels):
            info = f.create_group(f"DataSetInfo/Channel {c}")
            info.attrs["Color"] = _text("1.000 1.000 1.000")
            if names is not None:
                info.attrs["Name"] = _text(names[c])
        times_info = f.create_group("DataSetInfo/TimeInfo")
        times_info.attrs["DatasetTimePoints"] = _text(str(times))
        times_info.attrs["FileTimePoints"] = _text(str(times))
        for level in range(levels):
            step = 2**level
            for t in range(times):
                for c in range(channels):
                    volume = stack[t, c, :, ::step, ::step]
                    group = f.create_group(f"DataSet/ResolutionLevel {level}/TimePoint {t}/Channel {c}")
                    for key, size in zip(("ImageSizeX", "ImageSizeY", "ImageSizeZ"),
                                         (volume.shape[2], volume.shape[1], volume.shape[0]), strict=True):
                        group.attrs[key] = _text(str(size))
                    if chunks is None:
                        group.create_dataset("Data", data=volume)
                    else:  # padded to whole chunks, as Imaris stores it
                        padded = [-(-s // k) * k for s, k in zip(volume.shape, chunks, strict=True)]
                        data = np.zeros(padded, volume.dtype)
                        data[:volume.shape[0], :volume.shape[1], :volume.shape[2]] = volume
                        group.create_dataset("Data", data=data, chunks=chunks, compression=compression,
                                             shuffle=shuffle, fletcher32=fletcher32)
                    group.create_dataset("Histogram", data=np.zeros(256, np.uint64))
    return out.getvalue()
