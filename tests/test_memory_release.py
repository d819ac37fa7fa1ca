"""After a large transfer the heap it freed goes back to the OS: a thread churns packet-sized blocks, then the trim."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from django.conf import settings

# In a process of its own, so what the test suite already holds does not blur the figures: a
# thread allocates and frees 400 blocks of 256 KiB (a download's packets) keeping at most 75 MiB
# alive, as a transport thread does; its heap keeps the freed space until the trim.
CHURN = textwrap.dedent(
    """
    import os, threading
    from courier_site.memory import release_freed_memory

    def resident_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    held = []

    def churn():
        kept = []
        for _ in range(400):
            kept.append(os.urandom(256 * 1024))
            if len(kept) > 300:
                kept.pop(0)
        held.append(kept[-1])

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = resident_mib()
    release_freed_memory()
    print(before, resident_mib())
    """
)


def test_the_heap_a_thread_freed_is_returned_to_the_os() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHURN], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60, check=True
    )
    before, after = map(int, result.stdout.split())
    assert before - after >= 15, f"resident {before} MiB before the trim, {after} MiB after"
