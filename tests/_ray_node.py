"""`ray start` for a second Ray node on the same machine, kept on 127.0.0.1.

Run as ``python tests/_ray_node.py start --address=127.0.0.1:PORT --node-ip-address=127.0.0.1
... --block`` with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's own `ray start` command with
two of its settings told apart. Why: Ray 2.60's `ray start --address` refuses to start a
non-head node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("multi-node clusters are not
supported on Windows and OSX"), and with the variable at 1 it rewrites 127.0.0.1 and
localhost, in --address and --node-ip-address alike, to the machine's outward IP, where
a head kept on loopback does not listen (and where no test's server may listen). Here
the variable stays 0 (Ray's IP lookups answer 127.0.0.1, also in the raylet and agents
this command starts), and only the refusal is lifted.
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = True  # the refusal of `ray start --address` (scripts.py)
services.get_node_ip_address = lambda address=None: "127.0.0.1"  # what the variable at 0 answers

if __name__ == "__main__":
    sys.exit(main())
