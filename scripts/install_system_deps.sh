#!/usr/bin/env bash
# Install the Debian packages the test suite needs and pip cannot provide: a PostgreSQL
# server and PostGIS 3, for the real stac-fastapi-pgstac server of tests/stac_server.py,
# and Chromium, which renders `dipfill report` pages headless in tests/test_operator_view.py.
#
# Idempotent: when the packages are installed it only asks dpkg and exits (well under a
# second). Installs non-interactively with apt-get, as root or through sudo.
#
#   PG_MAJOR=15 scripts/install_system_deps.sh     # pick the PostgreSQL major version
#   DIPFILL_SKIP_SYSTEM_DEPS=1 make install        # skip this script entirely
#
# Exit status: 0 when the packages are (now) installed, 1 when they could not be.
set -euo pipefail

if [ "${DIPFILL_SKIP_SYSTEM_DEPS:-0}" = "1" ]; then
    echo "install_system_deps: DIPFILL_SKIP_SYSTEM_DEPS=1, skipping" >&2
    exit 0
fi

say() { echo "install_system_deps: $*" >&2; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    say "not a Debian/Ubuntu system (no dpkg-query/apt-get): install PostgreSQL,"
    say "PostGIS 3 and Chromium yourself (tests that need them are skipped outside CI)"
    exit 1
fi

installed() {  # installed PKG -> 0 when dpkg has PKG fully installed
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# The PostgreSQL major version: $PG_MAJOR, else the server already installed (newest),
# else the one this release's "postgresql" metapackage depends on.
pg_major="${PG_MAJOR:-}"
if [ -z "$pg_major" ]; then
    pg_major="$(dpkg-query -W -f='${Package} ${Status}\n' 'postgresql-[0-9]*' 2>/dev/null \
        | awk '$NF == "installed" && $1 ~ /^postgresql-[0-9]+$/ {sub("postgresql-", "", $1); print $1}' \
        | sort -n | tail -n 1)"
fi

# Packages that do not depend on the PostgreSQL version.
other_packages="chromium"

packages_for() { echo "postgresql-$1 postgresql-$1-postgis-3 $other_packages"; }

if [ -n "$pg_major" ]; then
    missing=""
    for p in $(packages_for "$pg_major"); do
        installed "$p" || missing="$missing $p"
    done
    if [ -z "$missing" ]; then
        exit 0  # the fast path: everything is there
    fi
fi

# Something has to be installed: become root (or use sudo) and refresh the package lists.
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    say "PostgreSQL/PostGIS 3/Chromium are missing and this needs root: run as root, install sudo,"
    say "or run:  apt-get install postgresql postgis chromium   (or set DIPFILL_SKIP_SYSTEM_DEPS=1)"
    exit 1
fi

say "updating the apt package lists"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq

if [ -z "$pg_major" ]; then
    pg_major="$(apt-cache depends postgresql 2>/dev/null \
        | awk '/Depends: postgresql-[0-9]+$/ {sub(".*postgresql-", ""); print; exit}')"
    if [ -z "$pg_major" ]; then
        say "cannot tell which PostgreSQL version this release ships (apt-cache depends postgresql)"
        exit 1
    fi
fi

missing=""
for p in $(packages_for "$pg_major"); do
    installed "$p" || missing="$missing $p"
done
say "installing:$missing"
# shellcheck disable=SC2086  # word splitting of the package list is intended
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends $missing >/dev/null
for p in $(packages_for "$pg_major"); do
    if ! installed "$p"; then
        say "$p is still not installed"
        exit 1
    fi
done
say "installed PostgreSQL $pg_major with PostGIS 3, and $other_packages"
