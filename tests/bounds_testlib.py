"""Helpers for the resource-bound tests (issue 12): the real server as a
subprocess (``dicomstore serve``) whose memory is read from /proc, and a
deflate bomb built in milliseconds."""

from __future__ import annotations

import socket
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, serve_command, wait_listening

MiB = 1024 * 1024


class Served:
    """A running ``dicomstore serve``: its ports, process and log file."""

    def __init__(self, proc: subprocess.Popen, port: int, http_port: int | None, log: Path):
        self.proc, self.port, self.http_port, self.log = proc, port, http_port, log

    def status_kib(self, field: str) -> int:
        """``VmRSS``, ``VmHWM`` ... of the server process, in KiB (/proc/PID/status)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def rss_mib(self) -> float:
        return self.status_kib("VmRSS") / 1024

    def peak_mib(self) -> float:
        return self.status_kib("VmHWM") / 1024

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def served(tmp_path: Path, *extra: str, http: bool = False) -> Iterator[Served]:
    """``dicomstore serve`` on free ports into ``tmp_path/store``, stopped afterwards."""
    port = free_port()
    http_port = free_port() if http else None
    args = [*extra, "--fsync", "off"]
    if http_port is not None:
        args += ["--http-port", str(http_port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(port, tmp_path / "store", *args), stdout=out, stderr=out
        )
    try:
        wait_listening(port, proc)
        if http_port is not None:
            wait_listening(http_port, proc)
        yield Served(proc, port, http_port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def deflate_bomb(head: bytes, zero_mib: int) -> bytes:
    """A raw deflate stream (PS3.5 A.5) of ``head`` then ``zero_mib`` MiB of zeros,
    about 1/1000 of that long: each MiB of zeros after the first compresses to the
    same bytes (their window is all zeros), so they are compressed once."""
    assert zero_mib >= 2
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(MiB)
    first = z.compress(head + zeros) + z.flush(zlib.Z_SYNC_FLUSH)
    middle = z.compress(zeros) + z.flush(zlib.Z_SYNC_FLUSH)
    last = z.compress(zeros) + z.flush()
    return first + middle * (zero_mib - 2) + last


def ob_header(group: int, elem: int, length: int) -> bytes:
    """The header of an explicit VR little endian OB element of ``length`` bytes."""
    return (group.to_bytes(2, "little") + elem.to_bytes(2, "little") + b"OB\0\0") + length.to_bytes(
        4, "little"
    )


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, the rest) of the next PDU on a blocking socket (PS3.8 9.3.1)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed inside a PDU")
            data += chunk
        return data

    header = exactly(6)
    return header[0], exactly(int.from_bytes(header[2:], "big"))
