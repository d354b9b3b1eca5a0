"""Run by tests/launch/test_multiprocess.py: two processes join a run, process 1 dies
(``os._exit``), process 0 then waits on a collective: it must exit with an error, not hang.

    python -m tests.launch.mp_die PROCESS_ID PORT
"""

import os
import sys

from jax.experimental import multihost_utils

from orchestration.cluster.distributed import initialize

pid, port = int(sys.argv[1]), sys.argv[2]
initialize(f"localhost:{port}", 2, pid, timeout_s=10)
multihost_utils.sync_global_devices("started")
if pid == 1:
    os._exit(3)
try:
    multihost_utils.sync_global_devices("after")
except Exception as e:  # noqa: BLE001 - the error is what is looked at
    print(f"process 0: {type(e).__name__}: {str(e)[:300]}", flush=True)
    sys.exit(4)
print("process 0: the collective returned although process 1 died", flush=True)
