"""Bad input found by trying dipfill as a new user would (issue 12): one line naming the
value and the fix, exit 1, no traceback, and nothing left in --out."""

from __future__ import annotations

import pytest

from dipfill.cli.main import main
from dipfill.engines.config import DIPConfig, preset
from dipfill.errors import InputError
from tests._data import ARG25_JAN


def fill(out, *inputs: object, extra: tuple[str, ...] = ()) -> int:
    return main(["fill", *map(str, inputs), "--out", str(out), "--engine", "fillnodata", *extra])


def one_line_error(capsys) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --- option types: an InputError naming the option and the expected type -------------------


@pytest.mark.parametrize(
    "pair, message",
    [
        ("lr=abc", "dip lr must be a number (e.g. 0.01), got 'abc'"),
        ("steps=abc", "dip steps must be an integer (e.g. 300), got 'abc'"),
        ("steps=null", "dip steps must be an integer (e.g. 300), got null"),
        ("steps=2.5", "dip steps must be an integer"),
        ("steps=true", "dip steps must be an integer"),
        ('channels_down="x"', "dip channels_down must be a list of integers"),
        ("channels_down=64", "dip channels_down must be a list of integers"),
        ('channels_skip=[4,"a",4,4,4]', "dip channels_skip must be a list of integers"),
        ("sigmoid=3", "dip sigmoid must be true or false, got 3"),
        ("percentiles=5", "dip percentiles must be a list of two numbers"),
        ("loss_min_value=abc", "dip loss_min_value must be a number or null"),
    ],
)
def test_dip_option_of_the_wrong_type_is_one_line_before_any_output(tmp_path, pair, message, capsys) -> None:
    out = tmp_path / "out"
    small = ("--steps", "1", "--channels", "4", "--depth", "2", "--strategy", "loop")  # were it to run
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "dip", *small, "--dip", pair])
    assert rc == 1 and not out.exists()
    assert message in one_line_error(capsys)


def test_dip_run_config_of_the_wrong_type_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("engine: dip\nstac: x\nout: y\nlr: fast\n")
    assert main(["run", "--config", str(config)]) == 1
    assert "dip lr must be a number" in one_line_error(capsys)


def test_dip_config_stores_values_in_their_field_types() -> None:
    cfg = preset("landsat2020", steps=300.0, lr=1, channels_down=[8, 8], channels_up=[8, 8], channels_skip=[0, 4],
                 percentiles=[2, 98], loss_min_value=0)
    assert cfg.steps == 300 and type(cfg.steps) is int
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.channels_down == (8, 8) and cfg.channels_skip == (0, 4)
    assert cfg.percentiles == (2.0, 98.0) and type(cfg.loss_min_value) is float
    assert DIPConfig(loss_min_value=None).loss_min_value is None
    with pytest.raises(InputError, match="dip steps must be an integer"):
        DIPConfig(steps="300")  # a notebook's string is not silently a number either
