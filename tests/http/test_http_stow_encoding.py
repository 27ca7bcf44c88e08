"""STOW-RS: a part whose data set is not encoded as its File Meta says is refused
(FailureReason C000, PS3.18 10.5.3), like C-STORE (archive/encoding.py)."""

from __future__ import annotations

import subprocess

from http_testlib import dataset_bytes, make_dataset, part10
from http_testlib import stow_post as post
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

STUDY = "1.2.826.0.1.3680043.10.6"
IMPLICIT = "data set is Implicit VR, context is Explicit VR Little Endian"


def implicit_behind_explicit_meta(sop: str) -> bytes:
    """A PS3.10 file whose meta says Explicit VR Little Endian, its data set Implicit VR."""
    ds = make_dataset(sop, study=STUDY, frames=1)
    whole = part10(ds)
    explicit = dataset_bytes(ds)
    assert whole.endswith(explicit)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return whole[: len(whole) - len(explicit)] + buffer.getvalue()


def test_implicit_data_set_behind_an_explicit_meta_is_409_c000(server) -> None:
    client, archive = server
    r = post(client, [implicit_behind_explicit_meta("1.2.6.1")])
    assert r.status_code == 409, r.text
    (item,) = r.json()["00081198"]["Value"]
    assert item["00081197"]["Value"] == [0xC000]
    assert item["00081155"]["Value"] == ["1.2.6.1"]
    assert IMPLICIT in r.headers["warning"]
    assert archive.instances() == [] and archive.check() == []
    assert not any(p.is_file() for p in archive.root.rglob("*.dcm"))


def test_with_a_good_part_is_202_and_only_the_good_one_is_stored(server) -> None:
    client, archive = server
    good = part10(make_dataset("1.2.6.2", study=STUDY, frames=1))
    r = post(client, [implicit_behind_explicit_meta("1.2.6.3"), good], f"/studies/{STUDY}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == ["1.2.6.2"]
    assert [i["00081197"]["Value"][0] for i in body["00081198"]["Value"]] == [0xC000]
    assert [row["sop_instance_uid"] for row in archive.instances()] == ["1.2.6.2"]
    assert archive.check() == []
    dump = subprocess.run(
        ["/usr/bin/dcmdump", str(archive.path_of("1.2.6.2"))], capture_output=True, text=True
    )
    assert dump.returncode == 0 and "1.2.6.2" in dump.stdout, dump.stderr
