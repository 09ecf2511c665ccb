"""Children die with their parent.

Worker and verifier processes run in their own process group (so a timeout can kill a compile
and everything it started), which also means the terminal's Ctrl-C and a SIGKILL of the
pipeline do not reach them. `watch_parent()` closes that gap from the child's side: a daemon
thread notices when the parent process is gone (the child is re-parented) and kills the
child's whole process group, compiler subprocesses included. It works the same whether the
parent exited, was SIGKILLed or crashed.
"""

from __future__ import annotations

import os
import signal
import threading
import time

POLL_S = 0.5


def watch_parent(poll_s: float = POLL_S) -> threading.Thread:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        try:
            if os.getpgid(0) == os.getpid():  # a group leader (worker): take its compiler children along
                os.killpg(0, signal.SIGKILL)
        finally:
            os._exit(137)

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread
