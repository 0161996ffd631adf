"""Bad input found by trying dipfill as a new user would (issue 12): one line naming the
value and the fix, exit 1, no traceback, and nothing left in --out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dipfill.cli.main import main
from dipfill.engines.config import DIPConfig, preset
from dipfill.errors import InputError
from dipfill.pipeline.fill import fill_files
from dipfill.specs import FillOptions
from tests._data import ARG25_JAN, DATA

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"


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


# --- --out, --datetime, --catalog: checked before any work, nothing written ----------------


def no_fill_work(monkeypatch) -> None:
    """Fail the test if a fill reaches the engines: these errors must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the fill was computed before the bad option was found")

    monkeypatch.setattr("dipfill.pipeline.fill.fill_arrays", refuse)


def unwritable_dir(tmp_path):
    """A directory this process cannot create files in (root passes every permission check:
    then a pseudo file system that refuses new files)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked
    if os.access("/sys", os.F_OK):
        try:
            (Path("/sys") / ".dipfill-probe").touch()
        except OSError:
            return Path("/sys")
    pytest.skip("no directory this root process cannot write in")


def test_out_that_is_a_file_is_refused_before_the_fill(tmp_path, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    assert fill(target, ARG25_JAN) == 1
    err = one_line_error(capsys)
    assert f"--out {target} is a file, not a directory" in err and "choose a directory" in err
    assert target.read_text() == "mine\n"


def test_out_under_a_file_is_refused_before_the_fill(tmp_path, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    assert fill(target / "sub" / "out", ARG25_JAN) == 1
    err = one_line_error(capsys)
    assert f"lies under {target}, which is a file" in err
    assert target.read_text() == "mine\n"


def test_out_that_cannot_be_written_is_refused_before_the_fill(tmp_path, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    locked = unwritable_dir(tmp_path)
    assert fill(locked / "dipfill-out", ARG25_JAN) == 1
    err = one_line_error(capsys)
    assert f"--out {locked / 'dipfill-out'}: cannot write in {locked}" in err and "choose a directory" in err
    assert not (locked / "dipfill-out").exists()


def test_run_out_that_is_a_file_is_one_line(tmp_path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    rc = main(["run", "--stac", str(CATALOG), "--out", str(target), "--engine", "fillnodata"])
    assert rc == 1
    err = one_line_error(capsys)
    assert f"--out {target} is a file, not a directory" in err
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("existing", [False, True])
def test_bad_datetime_is_one_line_and_writes_nothing(tmp_path, existing, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("x")
    assert fill(out, ARG25_JAN, extra=("--datetime", "garbage")) == 1
    err = one_line_error(capsys)
    assert "--datetime 'garbage' is not an ISO 8601 date" in err and "2010-01-16" in err
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_datetime_is_stated_in_utc() -> None:
    from dipfill.pipeline.fill import check_datetime

    assert check_datetime("2010-01-16") == "2010-01-16"
    assert check_datetime("2010-01-16T00:35:00Z") == "2010-01-16T00:35:00+00:00"
    assert check_datetime("2010-01-16T10:35:00+10:00") == "2010-01-16T00:35:00+00:00"


def test_catalog_that_is_a_file_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    out = tmp_path / "out"
    assert fill(out, ARG25_JAN, extra=("--catalog", str(target))) == 1
    err = one_line_error(capsys)
    assert f"--catalog {target} is a file, not a catalog directory" in err and "catalog.json" in err
    assert not out.exists() and target.read_text() == "mine\n"


@pytest.mark.parametrize("doc, message", [("not json", "is not a STAC catalog"),
                                          ('{"type": "Feature"}', "is not a STAC catalog (type 'Feature')")])
def test_catalog_directory_without_a_catalog_is_one_line(tmp_path, doc, message, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    root = tmp_path / "cat"
    root.mkdir()
    (root / "catalog.json").write_text(doc)
    out = tmp_path / "out"
    assert fill(out, ARG25_JAN, extra=("--catalog", str(root))) == 1
    assert message in one_line_error(capsys)
    assert not out.exists() and [p.name for p in root.iterdir()] == ["catalog.json"]


def test_catalog_json_path_stands_for_its_directory(tmp_path) -> None:
    root = tmp_path / "cat"
    assert fill(tmp_path / "a", ARG25_JAN, extra=("--catalog", str(root))) == 0
    assert fill(tmp_path / "b", ARG25_JAN, extra=("--catalog", str(root / "catalog.json"), "--id", "other")) == 0
    items = sorted(p.name for p in (root / "dipfill").iterdir() if p.is_dir())
    assert items == ["LS7_ETM_095_082_20100116_B3B4B5_crop512-dipfill", "other-dipfill"]


def test_a_write_that_fails_midway_leaves_no_products(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dipfill.pipeline.outputs.write_quicklook", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        fill_files([str(ARG25_JAN)], out, options=FillOptions(engine="fillnodata"))
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OSError, match="No space left"):
        fill_files([str(ARG25_JAN)], out, options=FillOptions(engine="fillnodata"))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # temporaries included


# --- --rgb: band numbers the file has ---------------------------------------------------------


@pytest.mark.parametrize("rgb, bad", [("9,9,9", 9), ("1,2,4", 4)])
def test_rgb_band_out_of_range_is_one_line(tmp_path, rgb, bad, monkeypatch, capsys) -> None:
    no_fill_work(monkeypatch)
    out = tmp_path / "out"
    assert fill(out, ARG25_JAN, extra=("--rgb", rgb)) == 1
    err = one_line_error(capsys)
    assert f"--rgb {rgb}: band {bad} is out of range; {ARG25_JAN.name} has 3 band(s)" in err
    assert "from 1 to 3" in err and not out.exists()


def test_rgb_default_on_a_single_band_file_is_grey_and_explicit_bands_are_checked(tmp_path, capsys) -> None:
    import rasterio

    with rasterio.open(ARG25_JAN) as src:
        profile = {**src.profile, "count": 1}
        band = src.read(1)
    single = tmp_path / "b3.tif"
    with rasterio.open(single, "w", **profile) as dst:
        dst.write(band, 1)
    assert fill(tmp_path / "grey", single) == 0
    assert (tmp_path / "grey" / "b3-dipfill_quicklook.png").exists()
    assert fill(tmp_path / "ones", single, extra=("--rgb", "1,1,1")) == 0
    capsys.readouterr()
    assert fill(tmp_path / "bad", single, extra=("--rgb", "1,2,3")) == 1
    assert "band 2 is out of range; b3.tif has 1 band(s)" in one_line_error(capsys)



# --- a password in a URL: never on stdout, in a log line, an error or runs/<id>.json -----------

SECRET_URL = "http://user:secret@127.0.0.1:9/B4.tif"  # nothing listens on port 9: fails at once


def catalog_copy(tmp_path, b4_href: str | None = None) -> Path:
    """The committed catalog copied (VRTs and their rasters), B4 of every item at ``b4_href``."""
    import json
    import shutil

    cat = tmp_path / "stac"
    shutil.copytree(CATALOG.parent, cat)
    for tif in (DATA / "arg25_menindee").glob("*.tif"):
        shutil.copy(tif, tmp_path / tif.name)  # the VRTs point three levels up
    if b4_href is not None:
        for item in cat.glob("*/LS7*/LS7*.json"):
            doc = json.loads(item.read_text())
            doc["assets"]["B4"]["href"] = b4_href
            item.write_text(json.dumps(doc))
    return cat / "catalog.json"


def local_pool(monkeypatch, pool_class=None) -> None:
    """`dipfill run` on an in-process pool instead of starting Ray."""
    from dipfill.pipeline.executor import LocalPool

    monkeypatch.setattr("dipfill.pipeline.run._engine_pool",
                        lambda request, address, cpus: (pool_class or LocalPool)(
                            request.options.engine, dict(request.options.engine_options), request.options.fallback))


@pytest.fixture
def cli_logs():
    """What `dipfill -vv` and `dipfill -vv --log-format json` would print of every logger
    (GDAL's messages through rasterio's included): the CLI's own formatters, at DEBUG."""
    import io
    import logging

    from dipfill.cli.logs import TEXT_FORMAT, JsonFormatter, TextFormatter

    stream = io.StringIO()
    handlers = [logging.StreamHandler(stream), logging.StreamHandler(stream)]
    handlers[0].setFormatter(TextFormatter(TEXT_FORMAT))
    handlers[1].setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    for h in handlers:
        root.addHandler(h)
    yield stream
    for h in handlers:
        root.removeHandler(h)
    root.setLevel(level)


def everything_shown(capsys, caplog, cli_logs, out: Path) -> str:
    """stdout, stderr, the CLI's log lines, dipfill's own log records (as an embedding
    application's handler gets them) and the run records."""
    streams = capsys.readouterr()
    records = "".join(p.read_text() for p in (out / "runs").glob("*.json"))
    own = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dipfill"))
    return streams.out + streams.err + cli_logs.getvalue() + own + records


def test_url_password_of_an_asset_is_never_shown(tmp_path, monkeypatch, capsys, caplog, cli_logs) -> None:
    stac = catalog_copy(tmp_path, SECRET_URL)
    local_pool(monkeypatch)
    out = tmp_path / "out"
    caplog.set_level("DEBUG")
    assert main(["run", "--stac", str(stac), "--out", str(out), "--engine", "fillnodata"]) == 1
    shown = everything_shown(capsys, caplog, cli_logs, out)
    assert "secret" not in shown and "user:" not in shown
    assert "127.0.0.1:9/B4.tif" in shown  # the message still names the asset
    assert "REDACTED@127.0.0.1:9/B4.tif" in cli_logs.getvalue()  # GDAL's own messages, redacted when shown


def test_url_password_in_a_message_from_a_worker_is_never_shown(tmp_path, monkeypatch, capsys, caplog,
                                                                cli_logs) -> None:
    """A worker's error reaches the driver as Ray's RayTaskError: its text holds the remote
    traceback, chained causes included (GDAL's own message with the whole URL)."""
    import traceback

    from ray.exceptions import RayTaskError

    from dipfill.errors import SceneReadError
    from dipfill.pipeline.executor import LocalPool

    def remote_error() -> Exception:
        try:
            try:
                raise OSError(f"CURL error reading /vsicurl/{SECRET_URL}?sig=abc")
            except OSError as exc:
                raise SceneReadError("item x asset B4: cannot read window") from exc
        except SceneReadError as cause:
            tb = "".join(traceback.format_exception(cause))
            return RayTaskError("EngineWorker.fit", tb, cause).as_instanceof_cause()

    class FailingPool(LocalPool):
        def run(self, tasks, on_done, method="fit"):
            raise remote_error()

    stac = catalog_copy(tmp_path)
    local_pool(monkeypatch, FailingPool)
    out = tmp_path / "out"
    caplog.set_level("DEBUG")
    assert main(["run", "--stac", str(stac), "--out", str(out), "--engine", "fillnodata", "--max-scenes", "1"]) == 1
    shown = everything_shown(capsys, caplog, cli_logs, out)
    assert "cannot read window" in shown and "127.0.0.1:9/B4.tif" in shown
    assert "secret" not in shown and "sig=abc" not in shown


@pytest.mark.parametrize("flag", ["input", "--guide", "--mask"])
def test_url_password_in_an_error_line_is_never_shown(tmp_path, flag, capsys) -> None:
    args = {"input": [SECRET_URL], "--guide": [str(ARG25_JAN), "--guide", SECRET_URL],
            "--mask": [str(ARG25_JAN), "--mask", SECRET_URL]}[flag]
    assert main(["fill", *args, "--out", str(tmp_path / "out"), "--engine", "fillnodata"]) == 1
    err = one_line_error(capsys)
    assert "127.0.0.1:9/B4.tif" in err and "secret" not in err


def test_redaction_of_url_passwords() -> None:
    import logging

    from dipfill.cli.logs import JsonFormatter, TextFormatter
    from dipfill.raster.hrefs import redact_href, redact_text

    assert redact_href("https://user:secret@host/a.tif?sig=x") == "https://host/a.tif"
    assert redact_href("https://user:p@ss@host/a.tif") == "https://host/a.tif"  # an unescaped @ in it
    assert redact_href("/vsicurl/https://token@host/a.tif") == "/vsicurl/https://host/a.tif"
    assert redact_href("https://host/v@2/a.tif") == "https://host/v@2/a.tif"  # an @ in the path is no userinfo
    assert redact_href("C:/data/a.tif") == "C:/data/a.tif"
    text = "cannot open '/vsicurl/https://user:secret@host/a.tif' (see https://u:p@w@h/x); mail me@example.org"
    assert redact_text(text) == ("cannot open '/vsicurl/https://REDACTED@host/a.tif' (see https://REDACTED@h/x); "
                                 "mail me@example.org")
    record = logging.LogRecord("dipfill.x", logging.WARNING, __file__, 1, "reading %s", (SECRET_URL,), None)
    for formatter in (TextFormatter("%(message)s"), JsonFormatter()):
        line = formatter.format(record)
        assert "secret" not in line and "REDACTED@127.0.0.1:9/B4.tif" in line


# --- sanitised ids: distinct ids never share an output ------------------------------------------


def test_ids_that_sanitise_alike_stay_distinct_and_stable() -> None:
    from dipfill.stac.ids import unique_id

    assert unique_id("evil") == "evil" and unique_id("LS7_ETM_095_082_20100116") == "LS7_ETM_095_082_20100116"
    hashed = unique_id("../../evil")
    assert hashed.startswith("evil-") and len(hashed) == len("evil-") + 8 and hashed == unique_id("../../evil")
    assert len({unique_id(i) for i in ("evil", "../../evil", "evil/", "/evil", "evil?")}) == 5
    long = unique_id("x" * 300)
    assert len(long) <= 200 and long != unique_id("x" * 301)
    with pytest.raises(InputError, match="cannot make a usable id"):
        unique_id("../..")


def test_fill_ids_that_sanitise_alike_do_not_overwrite_each_other(tmp_path) -> None:
    import json

    out = tmp_path / "out"
    assert fill(out, ARG25_JAN, extra=("--id", "evil")) == 0
    assert fill(out, ARG25_JAN, extra=("--id", "../../evil")) == 0
    items = sorted(p.name for p in out.glob("*-dipfill.json"))
    assert len(items) == 2 and "evil-dipfill.json" in items
    other = next(i for i in items if i != "evil-dipfill.json")
    assert other.startswith("evil-") and json.loads((out / other).read_text())["id"] == other[: -len(".json")]
    assert not (tmp_path / "evil-dipfill.json").exists()  # nothing escaped --out


def test_run_ids_that_sanitise_alike_do_not_share_a_scene_dir(tmp_path) -> None:
    from dipfill.pipeline.stages import output_id, scene_dir

    a = {"id": "evil", "collection": "c"}
    b = {"id": "../../evil", "collection": "c"}
    assert output_id(a) == "evil-dipfill" and output_id(b) != output_id(a)
    assert scene_dir(tmp_path, a) != scene_dir(tmp_path, b)
    assert scene_dir(tmp_path, a).parent == scene_dir(tmp_path, b).parent == tmp_path / "c"


def test_mcpn_option_of_the_wrong_type_is_one_input_error() -> None:
    from dipfill.engines.mcpn import MCPNConfig

    with pytest.raises(InputError, match="mcpn head_kernel must be an integer"):
        MCPNConfig(head_kernel="x")
    with pytest.raises(InputError, match="mcpn cycle_weight must be a number"):
        MCPNConfig(cycle_weight="heavy")
    cfg = MCPNConfig(head_channels=[16.0, 16], head_skip=[4, 4], prior_window=31.0)
    assert cfg.head_channels == (16, 16) and type(cfg.prior_window) is int


def test_a_closed_pipe_is_not_a_traceback() -> None:
    """``dipfill search | head -1``: the reader is gone before the first write."""
    import subprocess
    import sys as _sys

    read, write = os.pipe()
    os.close(read)  # closed before the child writes anything: EPIPE on its first write
    proc = subprocess.run([_sys.executable, "-m", "dipfill.cli.main", "search", "--stac",
                           str(DATA / "arg25_menindee" / "stac" / "catalog.json")], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
