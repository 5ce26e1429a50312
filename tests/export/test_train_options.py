"""``train --bf16``: bfloat16 autocast only where the CPU runs it natively, unless told."""

from __future__ import annotations

import pytest

from model_export import train


@pytest.mark.parametrize(
    "flag, native, expected",
    [("auto", True, True), ("auto", False, False), ("0", True, False), ("1", True, True)],
)
def test_bf16_flag_resolves_against_the_cpu(flag: str, native: bool, expected: bool) -> None:
    assert train.use_bf16(flag, native) is expected


def test_forcing_bf16_on_a_cpu_that_emulates_it_warns_and_obeys(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.use_bf16("1", native=False) is True
    assert "without native bfloat16" in capsys.readouterr().err


def test_default_follows_this_cpu_and_is_recorded_as_a_number() -> None:
    # The resolved value (not "auto") is what the checkpoint's args and the history record.
    args = train.parse_args([])
    assert args.bf16 == int(train.cpu_has_native_bf16())


def test_an_unknown_bf16_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--bf16", "yes"])
    assert "invalid choice" in capsys.readouterr().err
