"""The schemas every message to the server must match (pydantic, which FastAPI brings).

Strict: no extra fields, no coercion (``true`` is not a quality, ``"5"`` not an id), finite
numbers only. A message that does not match raises ProtocolError with a short reason and the
session goes on. Names and ranges that depend on the portrait (edit channels) are checked by the
session; the wire format itself is in ``protocol.py``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from .protocol import ProtocolError, control, unpack

__all__ = ["Config", "Edits", "Frame", "Reset", "Source", "Stats", "parse_binary", "parse_control"]

MAX_EDITS = 256                 # entries in one edits message (the ICT head has 53 + 3 angles)
MAX_ID = 2**53                  # frame ids are echoed back; JavaScript numbers stay exact up to here
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Frame(_Message):
    type: Literal["frame"]
    id: Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)] | None = None
    t: Finite | None = None     # the client's send time, echoed back


class Source(_Message):
    type: Literal["source"]


class Edits(_Message):
    type: Literal["edits"]
    edits: Annotated[dict[Annotated[str, StringConstraints(max_length=64)], Finite], Field(max_length=MAX_EDITS)]


class Reset(_Message):
    type: Literal["reset"]


class Config(_Message):
    type: Literal["config"]
    format: Literal["jpeg", "webp"] | None = None
    quality: Annotated[int, Field(ge=1, le=100)] | None = None


class Stats(_Message):
    type: Literal["stats"]


_BINARY = TypeAdapter(Annotated[Union[Frame, Source], Field(discriminator="type")])
_CONTROL = TypeAdapter(Annotated[Union[Edits, Reset, Config, Stats], Field(discriminator="type")])


def parse_binary(message: bytes) -> tuple[Frame | Source, bytes]:
    """A binary message -> (its checked header, the image bytes)."""
    header, payload = unpack(message)
    return _validate(_BINARY, header), payload


def parse_control(text: str) -> Edits | Reset | Config | Stats:
    """A text message -> the checked control message."""
    return _validate(_CONTROL, control(text))


def _validate(adapter: TypeAdapter, obj: dict):
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(_reason(exc)) from None


def _reason(exc: ValidationError, limit: int = 300) -> str:
    """'edits.yaw: Input should be a valid number; ...', without echoing the input back."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p)[:40] for p in err["loc"][1:])  # [0] is the union's tag, the message type
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    text = "invalid message: " + "; ".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."
