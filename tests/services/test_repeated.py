"""Lines a peer can have the server repeat at will (services/repeated.py): the first
few per association, the rest counted in one line at its end (review68 #4)."""

from __future__ import annotations

import logging

import pytest

from dicomstore.services.repeated import FIRST, Repeated


def test_the_first_are_logged_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("dicomstore.test.repeated")
    repeated = Repeated(log)
    with caplog.at_level(logging.INFO, logger=log.name):
        for n in range(10):
            repeated.say(logging.INFO, "stray cancels", "peer", f"cancel {n} ignored")
        repeated.say(logging.WARNING, "responses to nothing", "peer", "a 100%s response")
        repeated.summary("peer")
    assert FIRST == 3
    assert caplog.messages == [
        "peer: cancel 0 ignored",
        "peer: cancel 1 ignored",
        "peer: cancel 2 ignored (more of these: counted, said when the association ends)",
        "peer: a 100%s response",  # (the text as is: never a format, review69 I1)
        "peer: 7 more stray cancels, not logged each",
    ]
    assert caplog.records[-1].levelno == logging.INFO  # (the level of its kind)
