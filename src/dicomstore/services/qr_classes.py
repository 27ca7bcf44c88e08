"""The Query/Retrieve and Storage Commitment SOP Classes the server serves, and the
levels of each Q/R information model, top first (PS3.4 C.6.1.1, C.6.2.1; J.3.2).

One light home (it imports only ``uids``) for the negotiation policy
(``ServerConfig.policy``), which needs the classes before any association, and
for the SCPs, which load with pydicom only when a Q/R request first comes.
"""

from __future__ import annotations

from dicomstore import uids

#: The levels of each FIND information model, as named on the wire.
FIND_MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    uids.PATIENT_ROOT_QR_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    uids.STUDY_ROOT_QR_FIND: ("STUDY", "SERIES", "IMAGE"),
}
#: The levels of each MOVE information model.
MOVE_MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    uids.PATIENT_ROOT_QR_MOVE: FIND_MODEL_LEVELS[uids.PATIENT_ROOT_QR_FIND],
    uids.STUDY_ROOT_QR_MOVE: FIND_MODEL_LEVELS[uids.STUDY_ROOT_QR_FIND],
}
#: The levels of each GET information model: its root's.
GET_MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    uids.PATIENT_ROOT_QR_GET: FIND_MODEL_LEVELS[uids.PATIENT_ROOT_QR_FIND],
    uids.STUDY_ROOT_QR_GET: FIND_MODEL_LEVELS[uids.STUDY_ROOT_QR_FIND],
}

#: The SOP classes each SCP serves (ServerConfig.policy offers them).
FIND_SOP_CLASSES: tuple[str, ...] = tuple(FIND_MODEL_LEVELS)
MOVE_SOP_CLASSES: tuple[str, ...] = tuple(MOVE_MODEL_LEVELS)
GET_SOP_CLASSES: tuple[str, ...] = tuple(GET_MODEL_LEVELS)
COMMITMENT_SOP_CLASSES: tuple[str, ...] = (uids.STORAGE_COMMITMENT_PUSH,)
