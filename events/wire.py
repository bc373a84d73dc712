"""The wire form of an event, encoded once, as bytes (orjson), and read back cheaply.

The envelope is `{"event","id","executionId","payload"}` in that key order, so that a reader
takes the event's name and id from its first bytes without parsing a 64 KiB payload. The
publisher holds it in two parts around the id, which Redis assigns: `head` ends with `"id":`,
`tail` starts with `,"executionId"` and ends with the payload's and the envelope's closing
braces. From there the bytes are never decoded and encoded again on their way to a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import orjson

from events.errors import EventDecodeError
from events.models import Envelope, WireModel, decode, event_name

# Added to the payload of the output chunk that hits the output cap (the publish rules decide
# which one, events/lua/rules.lua): a second, marked copy of every chunk would cost a second
# encoding and a second copy into Redis.
TRUNCATED_FIELD = b',"truncated":true'

_HEAD_PREFIX = b'{"event":"'
_ID_KEY = b'","id":'


def utf8_len(text: str) -> int:
    """UTF-8 bytes of `text`, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def payload_bytes(payload: WireModel) -> bytes:
    """The payload's wire JSON: exactly pydantic's text (a test checks), at orjson's speed,
    which escapes a 64 KiB chunk of output in half the time."""
    return orjson.dumps(payload.model_dump(by_alias=True, exclude_none=True, mode="json"))


# An envelope as (prefix, body, suffix): see Encoded.parts.
Parts = tuple[bytes, bytes | memoryview, bytes]


@dataclass(frozen=True, slots=True)
class Encoded:
    """An envelope without its id, in the pieces it was encoded in: `head` (ends with
    `"id":`), `mid` (`,"executionId":…,"payload":`), the payload's JSON `body` and the closing
    brace. The body (up to a 64 KiB chunk) is never copied again after orjson wrote it: the
    direct path hands it to Redis as it is, once for XADD and once for PUBLISH
    (events/batches.py); joining a whole envelope per event cost ~40 us of a chunk's ~200 us of
    publisher CPU."""

    head: bytes
    mid: bytes
    body: bytes

    def __len__(self) -> int:
        return len(self.head) + len(self.mid) + len(self.body) + 1

    def tail(self) -> bytes:
        """Everything after the id, joined (the script path's argument)."""
        return self.mid + self.body + b"}"

    def parts(self, seq: int, *, truncated: bool = False) -> Parts:
        """The whole envelope with its id (and, on the chunk that hit the cap, `truncated` at the
        end of its payload), as a small prefix, the body as it is and a small suffix."""
        prefix = self.head + b"%d" % seq + self.mid
        if truncated:
            return prefix, memoryview(self.body)[:-1], TRUNCATED_FIELD + b"}}"
        return prefix, self.body, b"}"


def encode(event: str, execution_id: str, payload: WireModel) -> Encoded:
    head = _HEAD_PREFIX + event.encode() + _ID_KEY
    mid = b',"executionId":' + orjson.dumps(execution_id) + b',"payload":'
    return Encoded(head, mid, payload_bytes(payload))


def encode_payload(payload: WireModel) -> Encoded:
    """`encode` for a payload that names its execution."""
    execution_id: str = payload.execution_id  # type: ignore[attr-defined]
    return encode(event_name(payload), execution_id, payload)


class RawEvent:
    """An envelope as it travels: its id and name read from the head, the bytes left as is.

    The relay and the CLI pass envelopes through without parsing the payload; `decode()` does
    the full check when a consumer needs the fields.
    """

    __slots__ = ("data", "event", "id")

    def __init__(self, id: int, event: str, data: bytes) -> None:
        self.id = id
        self.event = event
        self.data = data

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        raw = data.encode() if isinstance(data, str) else data
        # Our publisher writes `{"event":"<name>","id":<n>,...`; anything else is parsed fully.
        if raw.startswith(_HEAD_PREFIX):
            end = raw.find(b'"', len(_HEAD_PREFIX))
            id_start = end + len(_ID_KEY)
            id_end = raw.find(b",", id_start)
            if end > 0 and raw[end:id_start] == _ID_KEY and id_end > id_start:
                try:
                    seq = int(raw[id_start:id_end])
                except ValueError:
                    pass
                else:
                    return cls(seq, raw[len(_HEAD_PREFIX) : end].decode(), raw)
        try:
            env = decode(raw)
        except UnicodeDecodeError as e:
            raise EventDecodeError(f"bad envelope: {e}") from e
        return cls(env.id, env.event, raw)

    @property
    def terminal(self) -> bool:
        return self.event == "execution_complete"

    @property
    def text(self) -> str:
        return self.data.decode()

    def payload(self) -> dict[str, Any]:
        """The payload as plain JSON data, unchecked (`decode()` checks it against the models)."""
        doc = orjson.loads(self.data)
        payload: dict[str, Any] = doc["payload"]
        return payload

    def decode(self) -> Envelope:
        return decode(self.data)

    def __repr__(self) -> str:
        return f"RawEvent(id={self.id}, event={self.event!r})"
