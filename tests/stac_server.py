"""A real STAC API for tests: stac-fastapi-pgstac on a throwaway PostgreSQL + PostGIS.

`running_stac_server()` makes a temporary folder, `initdb`s a cluster in it, starts
PostgreSQL on 127.0.0.1 (a free port; fsync and full-page writes off: the data is
throwaway), creates the database, installs the pgstac schema (pypgstac's migration, the
version pypgstac ships), loads the fixture collections and items of
`tests/fixtures/stac/`, and starts `uvicorn stac_fastapi.pgstac.app:create_app --factory`
on 127.0.0.1 (another free port) with the Transactions extension on. On exit it stops
uvicorn and PostgreSQL (`pg_ctl stop -m fast`) and removes the folder: nothing is left
running. Both servers log to files in the folder; they are printed when start-up fails.

PostgreSQL refuses to run as root: as root it runs as the `postgres` user through
`runuser -u postgres --`; as any other user, as that user.

`missing_requirements()` says what is not installed (Debian packages from
`scripts/install_system_deps.sh`, Python packages from the `test` extras), so a fixture
can skip (or, in CI, fail) with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

FIXTURES = Path(__file__).parent / "fixtures" / "stac"
DATABASE = "stac"
PG_USER = "postgres"
# stac-fastapi-pgstac insists on a password setting; with `trust` authentication on
# 127.0.0.1 PostgreSQL never asks for it.
PG_PASSWORD = "unused"
PYTHON_MODULES = ("pypgstac", "psycopg", "stac_fastapi.pgstac", "uvicorn")

# Which fixture collection each item is loaded into (by the item id's prefix). The
# committed item files keep the collection ids of their sources; the loader rewrites it.
COLLECTION_BY_PREFIX = {
    "LC08_": "landsat-c2-l2",
    "LE07_": "landsat-c2-l2",
    "S2A_": "sentinel-2-l2a",
    "S2B_": "sentinel-2-l2a",
}
# Links the API makes itself; the items' own ones point at their source catalogues.
_API_LINK_RELS = {"self", "root", "parent", "collection", "items"}


class StacServerError(RuntimeError):
    """The server could not be started; the message carries both servers' logs."""


# ----------------------------------------------------------------------------- fixtures
def collection_for(item_id: str) -> str:
    for prefix, collection in COLLECTION_BY_PREFIX.items():
        if item_id.startswith(prefix):
            return collection
    raise KeyError(f"no fixture collection for item {item_id!r}")


def fixture_collections() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((FIXTURES / "collections").glob("*.json"))]


def fixture_item_files() -> list[Path]:
    return sorted((FIXTURES / "items").glob("*.json"))


def as_loaded(item: dict) -> dict:
    """An item as it goes into the server: our collection id, the source's own
    navigation links dropped (the API writes its own). Everything else, properties
    included, is kept as it is."""
    out = copy.deepcopy(item)
    out["collection"] = collection_for(out["id"])
    out["links"] = [link for link in out.get("links", []) if link.get("rel") not in _API_LINK_RELS]
    return out


def fixture_items() -> list[dict]:
    return [as_loaded(json.loads(p.read_text())) for p in fixture_item_files()]


# ------------------------------------------------------------------------- requirements
@dataclass(frozen=True)
class PostgresInstall:
    bindir: Path
    version: int


def find_postgres() -> PostgresInstall | None:
    """The newest PostgreSQL server install (Debian layout first, then PATH)."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        try:
            candidates.append(PostgresInstall(bindir, int(bindir.parent.name)))
        except ValueError:
            continue
    if candidates:
        return max(candidates, key=lambda c: c.version)
    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
        try:
            version = int(out.stdout.split()[-1].split(".")[0])
        except (IndexError, ValueError):
            version = 0
        return PostgresInstall(bindir, version)
    return None


def _postgis_installed(pg: PostgresInstall) -> bool:
    sharedirs = [Path(f"/usr/share/postgresql/{pg.version}")]
    pg_config = pg.bindir / "pg_config"
    if pg_config.exists():
        out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            sharedirs.append(Path(out.stdout.strip()))
    return any((d / "extension" / "postgis.control").exists() for d in sharedirs)


def missing_requirements() -> list[str]:
    """What the server needs and this machine lacks, one readable line each."""
    missing = []
    pg = find_postgres()
    if pg is None:
        missing.append("PostgreSQL server (initdb) not found")
    elif not _postgis_installed(pg):
        missing.append(f"PostGIS 3 for PostgreSQL {pg.version} not found (postgis.control)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            missing.append(f"running as root but there is no {PG_USER!r} user to run PostgreSQL")
        if shutil.which("runuser") is None:
            missing.append("running as root but `runuser` is not installed")
    for module in PYTHON_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(f"Python module {module} not installed")
    if missing:
        missing.append(
            "install with: bash scripts/install_system_deps.sh && .venv/bin/pip install -e '.[test]'"
        )
    return missing


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(what: str, missing: list[str]) -> None:
    """Skip when something a test needs is not installed; in CI (CI=true), fail instead:
    CI installs everything, so a skip there would hide a broken install."""
    if not missing:
        return
    import pytest

    message = f"{what} unavailable: " + "; ".join(missing)
    if in_ci():
        pytest.fail(message + " (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


# ------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StacServer:
    """A running server. `url` is the API root, `dsn` the database's libpq URL."""

    workdir: Path
    pg: PostgresInstall
    pg_port: int = 0
    api_port: int = 0
    postgres: subprocess.Popen | None = None  # runuser (as root) or the postmaster
    uvicorn: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    _stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/{DATABASE}"

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def pg_log(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def api_log(self) -> Path:
        return self.workdir / "uvicorn.log"

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    @property
    def pids(self) -> list[int]:
        """The processes that listen: the postmaster and uvicorn."""
        pids = [self.postmaster_pid]
        if self.uvicorn is not None:
            pids.append(self.uvicorn.pid)
        return [p for p in pids if p is not None]

    def logs(self) -> str:
        parts = []
        for path in (self.pg_log, self.api_log):
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"----- {path} -----\n{text[-20000:]}")
        return "\n".join(parts)

    # -- PostgreSQL as the postgres user when root ---------------------------------
    def _as_pg_user(self, argv: list[str]) -> list[str]:
        return (["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []) + argv

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = self._as_pg_user([str(self.pg.bindir / tool), *args])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        if out.returncode != 0:
            raise StacServerError(
                f"{' '.join(argv)} exited {out.returncode}\n{out.stdout}\n{out.stderr}\n{self.logs()}"
            )
        return out

    def start_postgres(self, timeout: float = 30) -> None:
        """initdb, then the postmaster as a child of ours (through runuser when root), so
        that it is reaped here when it stops and never left behind as a zombie."""
        import psycopg

        t = time.perf_counter()
        self._pg(
            "initdb", "-D", str(self.datadir), "-U", PG_USER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )
        self.timings["initdb_s"] = time.perf_counter() - t
        for attempt in range(3):  # a free port can be taken between asking and binding
            self.pg_port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.pg_port),
                "unix_socket_directories": f"'{self.workdir}'",
                "fsync": "off",
                "full_page_writes": "off",
                "synchronous_commit": "off",
                "max_connections": "50",
                "timezone": "'UTC'",  # date-only datetimes are read as UTC midnight
            }
            (self.datadir / "postgresql.auto.conf").write_text(
                "".join(f"{k} = {v}\n" for k, v in settings.items())
            )
            argv = self._as_pg_user([str(self.pg.bindir / "postgres"), "-D", str(self.datadir)])
            with open(self.pg_log, "ab") as log:
                self.postgres = subprocess.Popen(
                    argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            deadline = time.perf_counter() + timeout
            while self.postgres.poll() is None and time.perf_counter() < deadline:
                try:
                    with psycopg.connect(
                        f"postgresql://{PG_USER}@127.0.0.1:{self.pg_port}/postgres",
                        autocommit=True, connect_timeout=2,
                    ) as conn:
                        conn.execute(f"CREATE DATABASE {DATABASE}")
                    break
                except psycopg.OperationalError:
                    time.sleep(0.05)
            else:
                if self.postgres.poll() is None:
                    raise StacServerError(f"PostgreSQL did not start within {timeout:.0f} s\n{self.logs()}")
                if attempt < 2 and "already in use" in self.logs():
                    continue
                raise StacServerError(f"PostgreSQL exited {self.postgres.returncode}\n{self.logs()}")
            break
        self.timings["postgres_up_s"] = time.perf_counter() - t

    def migrate(self) -> str:
        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        t = time.perf_counter()
        db = PgstacDB(dsn=self.dsn)
        try:
            version = Migrate(db).run_migration()
        finally:
            db.close()
        self.timings["migrate_s"] = time.perf_counter() - t
        return version

    def load_fixtures(self) -> None:
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        t = time.perf_counter()
        db = PgstacDB(dsn=self.dsn)
        try:
            loader = Loader(db=db)
            loader.load_collections(iter(fixture_collections()), Methods.insert)
            loader.load_items(iter(fixture_items()), Methods.insert)
        finally:
            db.disconnect()
            db.close()
        self.timings["load_s"] = time.perf_counter() - t

    # -- the API ---------------------------------------------------------------------
    def api_env(self) -> dict:
        """The settings stac-fastapi-pgstac reads (pydantic-settings, from the
        environment): PG* for the database, ENABLE_TRANSACTIONS_EXTENSIONS for
        POST/PUT/DELETE. ENABLED_EXTENSIONS unset = every search extension."""
        return {
            "PGUSER": PG_USER,
            "PGPASSWORD": PG_PASSWORD,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGDATABASE": DATABASE,
            "ENABLE_TRANSACTIONS_EXTENSIONS": "true",
            # Set so that the API does not warn about defaults on every start.
            "STAC_FASTAPI_TITLE": "dipfill test STAC API",
            "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-pgstac over the fixtures of tests/fixtures/stac",
            "STAC_FASTAPI_LANDING_ID": "dipfill-test",
            "STAC_FASTAPI_VERSION": "0",
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }

    def start_api(self) -> None:
        self.api_port = free_port()
        self.env = self.api_env()
        env = {k: v for k, v in os.environ.items() if k != "ENABLED_EXTENSIONS"}
        env.update(self.env)
        argv = [
            sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning",
            "--workers", "1",
        ]
        with open(self.api_log, "ab") as log:
            # cwd = the temp folder: pydantic-settings would read a .env in the cwd.
            self.uvicorn = subprocess.Popen(
                argv, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait_api(self, timeout: float = 60) -> None:
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while True:
            if self.uvicorn is not None and self.uvicorn.poll() is not None:
                raise StacServerError(f"uvicorn exited {self.uvicorn.returncode}\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        json.load(r)
                        return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.perf_counter() > deadline:
                raise StacServerError(f"{self.url}/ did not answer within {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.1)

    # -- stop --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop both servers and remove the folder. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.uvicorn is not None and self.uvicorn.poll() is None:
            self.uvicorn.terminate()
            try:
                self.uvicorn.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.uvicorn.kill()
                self.uvicorn.wait(timeout=10)
        if self.postgres is not None and self.postgres.poll() is None:
            try:
                self._pg("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop")
                self.postgres.wait(timeout=30)
            except (StacServerError, subprocess.TimeoutExpired):
                pid = self.postmaster_pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                try:
                    self.postgres.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.postgres.pid, signal.SIGKILL)  # our own process group
                    self.postgres.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_stac_server(startup_timeout: float = 90) -> Iterator[StacServer]:
    """Start everything (see the module docstring), yield the server, stop everything."""
    missing = missing_requirements()
    if missing:
        raise StacServerError("missing: " + "; ".join(missing))
    pg = find_postgres()
    assert pg is not None
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dipfill-stac-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_USER)
        os.chown(workdir, user.pw_uid, user.pw_gid)
    os.chmod(workdir, 0o700)
    server = StacServer(workdir=workdir, pg=pg)
    atexit.register(server.stop)  # in case the process leaves without the finally below
    try:
        try:
            server.start_postgres()
            server.timings["pgstac_version"] = server.migrate()
            server.start_api()  # uvicorn imports for a few seconds while the fixtures load
            server.load_fixtures()
            server.wait_api(startup_timeout)
        except StacServerError:
            raise  # its message carries the logs
        except Exception as exc:
            raise StacServerError(f"{type(exc).__name__}: {exc}\n{server.logs()}") from exc
        server.timings["startup_s"] = time.perf_counter() - t0
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


if __name__ == "__main__":  # python tests/stac_server.py: start, print, wait for Ctrl-C
    with running_stac_server() as s:
        print(f"url={s.url} dsn={s.dsn} timings={s.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
