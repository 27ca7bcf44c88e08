"""review63 L1: an instance whose file went (deleted or replaced) between retrieve's
check and its transcode answered 500 with an ERROR, "cannot read: No such file or
directory", not the documented 404: ``sources.Unreadable`` drops the errno, so the
file's absence is asked of the storage."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dicomstore.http.common import HttpError
from dicomstore.http.transcoding import transcode_or_refuse

ROW = {
    "path": "1/2/1.2.3.dcm",
    "transfer_syntax_uid": "1.2.840.10008.1.2.4.50",
    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
    "sop_instance_uid": "1.2.3",
}


def _refused(storage: Any) -> HttpError:
    with pytest.raises(HttpError) as raised:
        transcode_or_refuse(SimpleNamespace(storage=storage), ROW, 1 << 30, 1 << 29)  # type: ignore[arg-type]
    return raised.value


def _gone(key: str) -> bool:
    return False


def _opener(error: OSError) -> Any:
    def open_(key: str) -> Any:
        raise error

    return open_


def test_a_local_file_gone_before_its_transcode_is_404(tmp_path: Path, caplog) -> None:
    gone = tmp_path / "gone.dcm"
    storage = SimpleNamespace(local_path=lambda key: gone, scratch=lambda: None, exists=_gone)
    with caplog.at_level(logging.ERROR):
        refused = _refused(storage)
    assert (refused.status, refused.message) == (404, "deleted since the search")
    assert not caplog.records


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOTDIR])
def test_a_stream_gone_before_its_transcode_is_404(code) -> None:
    error = OSError(code, "gone")
    storage = SimpleNamespace(
        exists=_gone, local_path=lambda key: None, scratch=lambda: None, open=_opener(error)
    )
    refused = _refused(storage)
    assert (refused.status, refused.message) == (404, "deleted since the search")


def test_a_file_that_cannot_be_read_is_still_500_logged(caplog) -> None:
    error = PermissionError(errno.EACCES, "Permission denied")
    storage = SimpleNamespace(
        exists=lambda key: True,
        local_path=lambda key: None,
        scratch=lambda: None,
        open=_opener(error),
    )
    with caplog.at_level(logging.ERROR):
        refused = _refused(storage)
    assert refused.status == 500 and "Permission denied" in refused.message
    assert any("not transcoded" in m for m in caplog.messages)
