"""Incoming DIMSE messages from PDVs, sans-I/O (PS3.7 6.3, PS3.8 Annex E).

A message is its command fragments (accumulated, then decoded) followed, when
the command declares one, by its data set fragments (passed on one by one,
never joined: an instance may be gigabytes).  PS3.8 E.1 forbids interleaving
the fragments of different messages or of command and data set, and both must
use the same presentation context; every breach is a RemoteProtocolError.

The assembler does not know the negotiated contexts: checking that a context
ID was accepted, and which SOP Class/transfer syntax it carries, is the
association's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomstore.dimse.decoding import Message, decode_message
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import ABORT_UNEXPECTED_PDU_PARAMETER, PDV

#: Default cap on an incoming command set (real ones are a few hundred bytes).
MAX_COMMAND_LENGTH = 1 << 20


@dataclass(slots=True)
class CommandReceived:
    """A complete command set arrived and was decoded (PS3.7 6.3.1)."""

    context_id: int
    message: Message


@dataclass(slots=True)
class DatasetFragment:
    """One data set PDV of the current message, in arrival order (PS3.8 E.1)."""

    context_id: int
    data: bytes | bytearray | memoryview
    is_last: bool


Event = CommandReceived | DatasetFragment


def _unexpected(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ABORT_UNEXPECTED_PDU_PARAMETER)


class DimseAssembler:
    """Feed PDVs with :meth:`receive`; get :class:`CommandReceived` / :class:`DatasetFragment`."""

    __slots__ = (
        "_max_command",
        "_command",
        "_command_ctx",
        "_dataset_ctx",
        "_dataset_begun",
        "_last_no_dataset",
    )

    def __init__(self, max_command_length: int = MAX_COMMAND_LENGTH) -> None:
        self._max_command = max_command_length
        self._command: bytearray | None = None  # command fragments so far
        self._command_ctx = 0
        self._dataset_ctx: int | None = None  # context of the awaited data set
        self._dataset_begun = False  # a fragment of it came
        self._last_no_dataset = False  # last command declared no data set (for messages)

    @property
    def dataset_in_progress(self) -> bool:
        """True while a command's data set has not been completely received."""
        return self._dataset_ctx is not None

    @property
    def command_in_progress(self) -> bool:
        """True while a command set is partly received."""
        return self._command is not None

    @property
    def part_in_progress(self) -> bool:
        """True while a command set, or a data set whose first fragment came, is partly
        received (not between a command and its data set's first fragment)."""
        return self._command is not None or (self._dataset_ctx is not None and self._dataset_begun)

    @property
    def idle(self) -> bool:
        """True between messages (nothing partly received)."""
        return self._dataset_ctx is None and self._command is None

    def receive(self, pdv: PDV) -> list[CommandReceived | DatasetFragment]:
        """Take one PDV; return the events it completes (at most one)."""
        ctx = pdv.context_id
        if not pdv.is_command:
            if ctx == self._dataset_ctx:  # the hot path: next fragment of the data set
                self._dataset_begun = True
                if pdv.is_last:
                    self._dataset_ctx = None
                elif not pdv.data:  # an empty fragment (even, PS3.8 E.1) carries nothing
                    return []
                return [DatasetFragment(ctx, pdv.data, pdv.is_last)]
            return self._unexpected_dataset(ctx)
        if self._dataset_ctx is not None:
            raise _unexpected(
                f"command PDV on context {ctx} while a data set on context "
                f"{self._dataset_ctx} is incomplete"
            )
        buffer = self._command
        if buffer is None:
            if pdv.is_last:  # one-fragment command: decode in place
                return [self._complete(ctx, pdv.data)]
            if len(pdv.data) > self._max_command:
                raise _unexpected(f"command set larger than {self._max_command} bytes")
            self._command = bytearray(pdv.data)
            self._command_ctx = ctx
            return []
        if ctx != self._command_ctx:
            raise _unexpected(f"command fragments switch from context {self._command_ctx} to {ctx}")
        if len(buffer) + len(pdv.data) > self._max_command:
            raise _unexpected(f"command set larger than {self._max_command} bytes")
        buffer += pdv.data
        if not pdv.is_last:
            return []
        self._command = None
        return [self._complete(ctx, buffer)]

    def _complete(self, ctx: int, data: bytes | bytearray | memoryview) -> CommandReceived:
        if len(data) > self._max_command:
            raise _unexpected(f"command set larger than {self._max_command} bytes")
        message = decode_message(data)
        if message.has_dataset:
            self._dataset_ctx = ctx
            self._dataset_begun = False
            self._last_no_dataset = False
        else:
            self._last_no_dataset = True
        return CommandReceived(ctx, message)

    def _unexpected_dataset(self, ctx: int) -> list[CommandReceived | DatasetFragment]:
        if self._command is not None:
            raise _unexpected(f"data set PDV on context {ctx} while a command set is incomplete")
        if self._dataset_ctx is not None:
            raise _unexpected(
                f"data set PDV on context {ctx}, but its command came on context "
                f"{self._dataset_ctx}"
            )
        if self._last_no_dataset:
            raise _unexpected(f"data set PDV on context {ctx} for a command that declares none")
        raise _unexpected(f"data set PDV on context {ctx} with no command awaiting one")
