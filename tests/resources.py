"""What a test may leave behind: our running threads and this process's open descriptors."""
from __future__ import annotations

import gc
import os
import threading
import time
from typing import Callable


def open_fds() -> int:
    """Descriptors this process has open."""
    return len(os.listdir('/proc/self/fd'))


def our_threads() -> list[str]:
    """Our threads that run. (An interrupt inside ``Thread.start()`` can leave a thread that never ran in
    threading's list of threads about to start: CPython's, not a thread, and its resources are released.)"""
    return [t.name for t in threading.enumerate() if t.name.startswith('iblnet_sync') and t.is_alive()]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Look again until a deadline at a condition that no event announces (threads ending, objects
    reclaimed), collecting garbage in between."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gc.collect()
        time.sleep(0.005)
    return True
