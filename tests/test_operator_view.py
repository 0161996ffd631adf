"""The operator's view of an output root (issue 12, item 7): per-stage timings in the run
record, `dipfill status` (done / failed / pending, exit 1 on a failure) and `dipfill report`
(one static HTML page, opened in headless Chromium without console errors).

The runs are real `dipfill run`s of the committed demo catalog with the fillnodata engine,
in process (LocalPool: no Ray start, a few seconds); one scene's band is corrupted so the
root holds a done and a failed scene, and a second root holds a run stopped mid-scene."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dipfill.cli.main import main
from dipfill.cli.run import build_request
from dipfill.errors import RunInterrupted
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.executor import LocalPool
from dipfill.pipeline.progress import STAGES
from dipfill.pipeline.report import gap_stats, write_report
from dipfill.pipeline.status import output_status
from tests._data import DATA

CATALOG = DATA / "arg25_menindee" / "stac"
JAN, FEB = "LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"


def _run(catalog: Path, out: Path, **kwargs):
    """``dipfill run --stac CATALOG --out OUT --engine fillnodata``, in process."""
    request = build_request({"stac": str(catalog / "catalog.json"), "out": str(out), "engine": "fillnodata"})
    return run_mod.run(request, pool=LocalPool("fillnodata", {}, "fillnodata"), **kwargs)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """``mixed``: FEB done, JAN failed (its B4 is not a raster). ``stopped``: a run stopped
    after its first batch (both scenes pending, the first with a patch store)."""
    base = tmp_path_factory.mktemp("operator")
    cat = base / "stac"
    shutil.copytree(CATALOG, cat)
    for tif in (DATA / "arg25_menindee").glob("*.tif"):
        shutil.copy(tif, base / tif.name)  # the VRTs point three levels up
    broken = base / "broken"
    shutil.copytree(cat, broken / "stac")
    for tif in (DATA / "arg25_menindee").glob("*.tif"):
        shutil.copy(tif, broken / tif.name)
    next((broken / "stac").glob(f"*/{JAN}/B4.vrt")).write_text("this is not a raster")
    _run(broken / "stac", base / "mixed")
    with pytest.raises(RunInterrupted):
        _run(cat, base / "stopped", stop_after_batches=1)  # as a driver killed after one batch
    return {"mixed": base / "mixed", "stopped": base / "stopped", "catalog": cat, "broken": broken / "stac"}


def _record(out: Path) -> dict:
    (path,) = (out / "runs").glob("*.json")
    return json.loads(path.read_text())


def test_the_run_record_times_every_stage_of_each_scene(roots) -> None:
    record = _record(roots["mixed"])
    scenes = {s["id"]: s for s in record["scenes"]}
    assert record["state"] == "finished" and record["counts"] == {"pending": 0, "done": 1, "current": 0, "failed": 1}
    done = scenes[FEB]
    assert set(done["timings"]) == set(STAGES) - {"guides", "publish"}  # no guide engine, no --publish
    assert all(v >= 0 for v in done["timings"].values())
    assert sum(done["timings"].values()) <= done["seconds"] + 0.05  # the stages are parts of the scene's time
    assert scenes[JAN]["status"] == "failed" and "B4.vrt" in scenes[JAN]["message"]
    assert all(len(s["bbox"]) == 4 for s in scenes.values())  # where a failed scene lies, for the map


def test_status_shows_done_and_failed_and_exits_1(roots, capsys) -> None:
    rc = main(["status", str(roots["mixed"])])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    failed = next(ln for ln in out if ln.startswith("failed"))
    assert JAN in failed and "B4.vrt" in failed and "\n" not in failed
    done = next(ln for ln in out if ln.startswith("done"))
    assert FEB in done and f"{FEB}-dipfill.json" in done
    assert out[-1].endswith("2 scene(s): 1 done, 1 failed, 0 pending")
    assert main(["status", str(roots["mixed"]), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"] == {"done": 1, "failed": 1, "pending": 0}
    assert [r["state"] for r in doc["runs"]] == ["finished"]


def test_status_of_a_stopped_run_shows_pending_scenes_then_done_after_the_rerun(roots, capsys) -> None:
    out = roots["stopped"]
    record = _record(out)
    assert record["state"] == "interrupted" and record["counts"]["pending"] == 2
    st = output_status(out)
    assert [s.state for s in st.scenes] == ["pending", "pending"] and st.runs[0].state == "interrupted"
    first = next(s for s in st.scenes if s.patches_total)
    assert 0 < first.patches_stored < first.patches_total and "a rerun resumes" in first.message
    assert main(["status", str(out)]) == 0  # nothing failed
    assert "pending" in capsys.readouterr().out

    # a driver killed outright leaves "running" with its pid: status sees it is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = next((out / "runs").glob("*.json"))
    killed = {**record, "state": "running", "pid": dead.pid}
    path.write_text(json.dumps(killed))
    st = output_status(out)
    assert st.runs[0].state == "killed" and all("stopped without finishing" in s.message for s in st.scenes)
    path.write_text(json.dumps({**killed, "pid": os.getpid()}))
    assert output_status(out).runs[0].state == "running"
    path.write_text(json.dumps(record))

    events: list[dict] = []
    _run(roots["catalog"], out, progress=events.append)  # resumes: the latest run that touched each scene says done
    lines = [e["msg"] for e in events if e["event"] == "patches"]
    # what the terminal shows: scene n of N, patches done/total, rate, ETA, and the run's ETA once known
    assert all(re.match(r"scene [12]/2 \S+-dipfill: patches \d+/\d+ .*patches/s, ETA \d+ s", m) for m in lines)
    assert lines[-1].startswith("scene 2/2 ") and re.search(r"run ETA \d+ s$", lines[-1]), lines
    st = output_status(out)
    assert [s.state for s in st.scenes] == ["done", "done"] and len(st.runs) == 2
    assert main(["status", str(out)]) == 0


def test_a_rerun_records_after_each_scene_that_worked_but_not_per_current_scene(roots, tmp_path, monkeypatch) -> None:
    """A cron rerun over many current scenes does not rewrite its record per scene."""
    out = tmp_path / "mixed"
    shutil.copytree(roots["mixed"], out)
    writes: list[list[str]] = []
    real = run_mod.write_summary

    def counting(root, summary):
        writes.append([s.status for s in summary.scenes])
        return real(root, summary)

    monkeypatch.setattr(run_mod, "write_summary", counting)
    monkeypatch.setattr(run_mod, "RECORD_EVERY", 3600.0)
    summary = _run(roots["broken"], out)
    assert [s.status for s in summary.scenes] == ["current", "failed"]  # FEB current, JAN fails again
    assert writes == [["pending", "pending"], ["current", "failed"], ["current", "failed"]]  # start, JAN, end
    st = output_status(out)
    assert [(s.id, s.state, s.run_id) for s in st.scenes] == [(JAN, "failed", summary.run_id),
                                                              (FEB, "done", summary.run_id)]
    assert next(s for s in st.scenes if s.id == FEB).message == "output current: no engine work"


@pytest.mark.parametrize("what", ["missing", "file", "empty"])
def test_status_and_report_refuse_what_is_not_an_output_root(tmp_path: Path, capsys, what: str) -> None:
    target = tmp_path / "out"
    if what == "file":
        target.write_text("x")
    elif what == "empty":
        (target / "runs").mkdir(parents=True)
        (target / "runs" / "notes.json").write_text("not json")
    for command in (["status", str(target)], ["report", str(target)]):
        assert main(command) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("dipfill: error: ") and str(target) in err, err
        assert "--out" in err
    assert not (target / "report.html").exists() if target.is_dir() else True


class _Page(HTMLParser):
    """The elements the tests look for: scene rows, footprints, images, failure items."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.paths: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "scene":
            self.rows.append(a.get("data-scene") or "")
        if tag == "path" and a.get("class") == "footprint":
            self.paths.append(a.get("data-scene") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])  # type: ignore[index]


def _parse(page_or_text: Path | str) -> _Page:
    page = _Page()
    page.feed(page_or_text.read_text(encoding="utf-8") if isinstance(page_or_text, Path) else page_or_text)
    return page


def test_report_shows_footprints_quicklooks_statistics_and_failures(roots, capsys) -> None:
    out = roots["mixed"]
    assert main(["report", str(out)]) == 0
    html_path = out / "report.html"
    assert capsys.readouterr().out.strip() == str(html_path)
    page = _parse(html_path)
    assert sorted(page.rows) == sorted([JAN, FEB]) and sorted(page.paths) == sorted([JAN, FEB])
    assert page.scripts == 0 and page.external == []
    (src,) = page.images  # the done scene's quicklook, found by its asset role, linked relatively
    assert not src.startswith(("/", "file:")) and (out / src).is_file() and src.endswith("_quicklook.png")
    text = html_path.read_text()
    record = _record(out)
    feb = next(s for s in record["scenes"] if s["id"] == FEB)
    assert f"{gap_stats(feb['counts'])['gap_percent']:.1f}" in text  # gap % of the done scene
    jan = next(s for s in record["scenes"] if s["id"] == JAN)
    assert "B4.vrt" in jan["message"] and html.escape(jan["message"]) in text  # the failure, escaped
    assert 'stroke-dasharray' in text  # the failed scene's source bbox, dashed
    assert not list(out.glob(".report.html.tmp-*"))


def test_report_escapes_ids_and_messages_from_users(roots, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(roots["mixed"] / "runs", out / "runs")
    path = next((out / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    record["scenes"][0]["id"] = "scene" + evil
    record["scenes"][1]["message"] = "OSError: " + evil
    path.write_text(json.dumps(record))
    html_path = write_report(out, html_path=tmp_path / "page.html")
    text = html_path.read_text()
    page = _parse(html_path)
    assert "<script" not in text and page.scripts == 0 and page.images == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "scene" + evil in page.rows


def test_report_of_a_chosen_run_and_with_embedded_images(roots, tmp_path: Path, capsys) -> None:
    out = roots["mixed"]
    run_id = _record(out)["run_id"]
    target = tmp_path / "alone.html"
    assert main(["report", str(out), "--run", run_id, "--html", str(target), "--embed-images"]) == 0
    (src,) = _parse(target).images
    assert src.startswith("data:image/png;base64,")
    capsys.readouterr()
    assert main(["report", str(out), "--run", "nope"]) == 1
    assert "--run nope: no such run" in capsys.readouterr().err


def test_status_and_report_read_an_output_root_on_object_storage(roots, s3, tmp_path: Path, capsys) -> None:
    """The same root on S3 (moto on 127.0.0.1): status and report read it through the store;
    the report goes beside the run records, its quicklook a relative link there, and a page
    written to this disk for it embeds the quicklook (no relative link reaches the bucket)."""
    from dipfill.storage import ObjectPath, read_text

    url = s3.bucket("operator") + "/outputs/mixed"
    ObjectPath(url).upload(roots["mixed"])
    assert main(["status", url]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("failed") and JAN in ln and "B4.vrt" in ln for ln in lines), lines
    assert any(ln.startswith("done") and FEB in ln and f"{FEB}-dipfill.json" in ln for ln in lines), lines
    assert main(["report", url]) == 0 and capsys.readouterr().out.strip() == f"{url}/report.html"
    page = _parse(read_text(f"{url}/report.html"))
    assert sorted(page.rows) == sorted([JAN, FEB])
    (src,) = page.images
    assert not src.startswith("data:") and (ObjectPath(url) / src).is_file()
    local = tmp_path / "from-s3.html"
    assert main(["report", url, "--html", str(local)]) == 0
    (src,) = _parse(local).images
    assert src.startswith("data:image/png;base64,")
    capsys.readouterr()
    assert main(["status", s3.bucket("operator") + "/nothing-here"]) == 1
    assert "nothing under this prefix" in capsys.readouterr().err


# ------------------------------------------------------------------ headless Chromium
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: scripts/install_system_deps.sh (make install) installs it")
        pytest.skip("chromium is not installed (Debian package chromium; make install installs it)")
    return exe


def _render(exe: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM Chromium built from ``page`` and the console lines it logged (messages,
    uncaught errors), with everything that could reach the network switched off."""
    proc = subprocess.run(
        [exe, "--headless=new", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return proc.stdout, console


def test_report_renders_in_headless_chromium_without_console_errors(roots, tmp_path: Path) -> None:
    exe = _chromium()
    # the check itself: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    _, console = _render(exe, broken, tmp_path / "profile")
    assert any("Uncaught ReferenceError" in ln for ln in console), console

    out = roots["mixed"]
    html_path = write_report(out)
    dom, console = _render(exe, html_path, tmp_path / "profile")
    assert console == []
    assert dom.count('class="scene"') == 2 and dom.count('class="footprint"') == 2
    assert '<svg id="footprints"' in dom and f'data-scene="{JAN}"' in dom and 'class="quicklook"' in dom
    assert "B4.vrt" in dom.split('id="failures"', 1)[1]
