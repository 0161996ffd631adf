"""`dipfill run` for `ray submit`, which uploads a Python script to the head and runs it there.

    ray submit deploy/cluster.yaml deploy/dipfill_run.py -- --config /home/ray/run.yaml --ray-address auto

runs ``dipfill run --config /home/ray/run.yaml --ray-address auto`` in the head's container
(the image's dipfill); the arguments after ``--`` are the `dipfill run` flags. ``ray submit``
joins them with spaces without quoting, so keep values free of spaces (or use a config).
"""

from __future__ import annotations

import sys

from dipfill.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
