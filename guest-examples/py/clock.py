"""clock: this run's real wall-clock time, two readings of the monotonic
clock, and fresh randomness (`time`, `datetime`, `random`, `os.urandom`,
`uuid`)."""
import os
import random
import time
import uuid
from datetime import datetime, timezone

import workhost


@workhost.handler
def execute(name, data):
    wall_ms = time.time_ns() // 1_000_000
    utc = datetime.fromtimestamp(wall_ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Two readings of the monotonic clock, the second once it has moved.
    first = time.monotonic_ns()
    second = time.monotonic_ns()
    while second == first:
        second = time.monotonic_ns()
    return {
        "wall_ms": wall_ms,
        "utc": utc,
        "mono_ms": [first / 1e6, second / 1e6],
        "random": random.random(),
        "bytes": list(os.urandom(16)),
        "uuid": str(uuid.uuid4()),
    }
