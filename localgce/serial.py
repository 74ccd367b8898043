"""An instance's serial port 1: the last 1 MB of console output, addressed by byte offsets.

`next` offsets only grow; when the buffer drops old bytes, a `start` before the oldest kept byte
is answered from the oldest kept byte (as GCE does). The bytes live in a file in the instance dir
so they survive a daemon restart; `base` (the offset of the file's first byte) is in the state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

SERIAL_BUFFER_BYTES = 1024 * 1024


class SerialPort:
    def __init__(
        self,
        path: Path,
        base: int = 0,
        limit_bytes: int = SERIAL_BUFFER_BYTES,
        clock: Callable[[], float] = time.time,
        on_base_change: Callable[[int], None] | None = None,
    ):
        self.path = Path(path)
        self.base = base
        self.limit_bytes = limit_bytes
        self.clock = clock
        self.on_base_change = on_base_change
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            with open(self.path, "ab") as fh:
                fh.write(data)
                size = fh.tell()
            # Trim in one go once we are a full buffer over, so trimming stays rare.
            if size > 2 * self.limit_bytes:
                kept = self.path.read_bytes()[-self.limit_bytes :]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_bytes(kept)
                os.replace(tmp, self.path)
                self.base += size - len(kept)
                if self.on_base_change:
                    self.on_base_change(self.base)

    def line(self, host: str, ident: str, pid: int, text: str) -> None:
        """One syslog-style line as the legacy script runner writes it (docs/gce-behaviour.md,
        "Startup and shutdown scripts")."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(self.clock()))
        self.write(f"{stamp} {host} {ident}[{pid}]: {text}\n".encode(errors="replace"))

    def read(self, start: int) -> tuple[bytes, int, int]:
        """(contents, start actually used, next) for a read from byte offset `start`."""
        with self._lock:
            data = self.path.read_bytes() if self.path.exists() else b""
        end = self.base + len(data)
        # Keep answers within the 1 MB window even between trims.
        oldest = max(self.base, end - self.limit_bytes)
        start = min(max(start, oldest), end)
        return data[start - self.base :], start, end
