"""Keep native libraries' stderr chatter out of the command's own stderr.

MediaPipe's LiteRT runtime writes INFO and WARNING lines straight to file descriptor 2
(the absl/glog format, ``W0000 00:00:... file.cc:123] ...``), whenever it likes. A
command-line tool needs stderr for its own messages, so :func:`route_native_stderr`
points fd 2 at a pipe whose lines go to the ``native`` logger (DEBUG, or WARNING for
absl ``E``/``F`` lines), and gives Python's ``sys.stderr`` a private copy of the
original descriptor so Python's own output is unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

log = logging.getLogger("native")
_SEVERE = re.compile(r"^[EF]\d{4} ")


class NativeStderr:
    def __init__(self) -> None:
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stderr = open(self._saved, "w", buffering=1, closefd=False)
        self._reader = os.fdopen(read_fd, "r", errors="replace")
        self._thread = threading.Thread(target=self._pump, name="native-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._reader:
            text = line.rstrip()
            if text:
                log.log(logging.WARNING if _SEVERE.match(text) else logging.DEBUG, "%s", text)


def route_native_stderr() -> NativeStderr | None:
    """Route fd 2 through the logger; does nothing when stderr has no file descriptor."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return NativeStderr()
