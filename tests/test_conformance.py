"""The conformance statement (PS3.2): made from the code, and the copy in docs/ is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomstore import uids
from dicomstore.conformance.commitment import COMMITMENT_STATUSES, FAILURE_REASONS
from dicomstore.conformance.document import SCP_STATUSES, statement
from dicomstore.conformance.qr import FIND_STATUSES, GET_STATUSES, MOVE_STATUSES
from dicomstore.dimse import status as st
from dicomstore.services.server import ServerConfig

DOCS = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"


def test_it_lists_every_storage_class_and_transfer_syntax_we_negotiate() -> None:
    text = statement()
    for uid in (*uids.storage_sop_classes(), *uids.transfer_syntaxes()):
        assert f"| `{uid}` |" in text
    assert uids.IMPLEMENTATION_CLASS_UID in text and uids.IMPLEMENTATION_VERSION_NAME in text
    assert "Level of Support 2" in text and "Element Coercion 0" in text


@pytest.mark.parametrize(
    "statuses",
    [SCP_STATUSES, FIND_STATUSES, MOVE_STATUSES, GET_STATUSES, COMMITMENT_STATUSES],
)
def test_every_status_it_names_is_a_known_status(statuses) -> None:
    for code, _when in statuses:
        assert not st.describe(code).startswith("Unknown"), hex(code)
    assert [f"| {code:04X} |" in statement() for code, _ in statuses] == [True] * len(statuses)


@pytest.mark.parametrize("kind", ["MOVE", "GET"])
def test_it_lists_the_retrieve_models(kind: str) -> None:
    text = statement()
    for uid in (getattr(uids, f"PATIENT_ROOT_QR_{kind}"), getattr(uids, f"STUDY_ROOT_QR_{kind}")):
        assert f"`{uid}`" in text
        assert uid in ServerConfig().policy().abstract_syntaxes


def test_it_lists_storage_commitment_and_its_failure_reasons() -> None:
    text = statement()
    assert f"`{uids.STORAGE_COMMITMENT_PUSH}`" in text
    assert f"`{uids.STORAGE_COMMITMENT_PUSH_INSTANCE}`" in text
    assert uids.STORAGE_COMMITMENT_PUSH in ServerConfig().policy().abstract_syntaxes
    assert uids.STORAGE_COMMITMENT_PUSH not in ServerConfig().policy(find=False).abstract_syntaxes
    for code, _when in FAILURE_REASONS:
        assert f"| {code:04X} |" in text


def test_the_cli_prints_it_and_the_copy_in_docs_is_current() -> None:
    # (a fresh interpreter: importing pynetdicom adds UIDs to pydicom's dictionary)
    out = subprocess.run(
        [sys.executable, "-m", "dicomstore.cli", "conformance"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.startswith("# DICOM Conformance Statement: dicomstore ")
    assert out == DOCS.read_text(), "regenerate: dicomstore conformance > docs/conformance.md"


def test_it_lists_the_dicomweb_resources_the_server_routes(tmp_path) -> None:
    """review116 L8: the statement said nothing of DICOMweb but that it exists. Each
    resource it names is one the app routes (a study's, a series', an instance's)."""
    import re

    from dicomstore.archive import Archive
    from dicomstore.conformance.web import _SERVICES
    from dicomstore.http import build_app

    text = statement()
    assert "## 6 DICOMweb (PS3.18)" in text and "Implicit VR Little Endian" in text
    archive = Archive(tmp_path / "a", fsync=False)
    routed = {getattr(route, "path", "") for route in build_app(archive).routes}
    archive.close()
    named = {
        path.replace("{study}", "{study:uid}")
        for _t, resources, _m in _SERVICES
        for path in re.findall(r"`(?:POST )?(/[^`]*)`", resources)
    }
    assert named and all(path.replace("{series}", "{series:uid}") in routed for path in named), (
        named - routed
    )
