"""``service.cellvoyager``: a CellVoyager plane's pixel size from the measurement settings beside it."""

from __future__ import annotations

from pathlib import Path

from service import cellvoyager

NAME = "Plate_B02_T0001F001L01A01Z01C0{}.tif"


def _mrf(declaration: str = '<?xml version="1.0" encoding="utf-8"?>') -> str:
    return (f'{declaration}\n<bts:MeasurementDetail bts:Version="1.0" '
            'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0">'
            '<bts:MeasurementChannel bts:Ch="1" bts:HorizontalPixelDimension="0.325" '
            'bts:VerticalPixelDimension="0.325" />'
            '<bts:MeasurementChannel bts:Ch="2" bts:HorizontalPixelDimension="0.65" />'
            "</bts:MeasurementDetail>")


def test_each_channel_has_the_size_its_settings_give(tmp_path: Path) -> None:
    (tmp_path / cellvoyager.MRF).write_text(_mrf())
    assert cellvoyager.pixel_size_um(tmp_path / NAME.format(1)) == (0.325, 0.325)
    assert cellvoyager.pixel_size_um(tmp_path / NAME.format(2)) == (0.65, 0.65)
    assert cellvoyager.pixel_size_um(tmp_path / NAME.format(3)) is None  # a channel it does not list
    assert cellvoyager.pixel_size_um(tmp_path / "cells.tif") is None  # not a CellVoyager plane


def test_settings_that_cannot_be_read_give_no_size_and_stop_nothing(tmp_path: Path) -> None:
    # An encoding expat cannot read raised ValueError / LookupError past the parse error caught,
    # and ended a whole unet-segment run with a traceback (a re-audit of this change).
    for number, declaration in enumerate(('<?xml version="1.0" encoding="shift_jis"?>',
                                          '<?xml version="1.0" encoding="no-such-encoding"?>',
                                          "not xml at all <")):
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / cellvoyager.MRF).write_text(_mrf(declaration))
        assert cellvoyager.pixel_size_um(folder / NAME.format(1)) is None
