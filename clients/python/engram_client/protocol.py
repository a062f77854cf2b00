"""The engram/1 wire format (docs/protocol.md): frames to bytes and back.

A frame is ``length:u32 | type:u8 | body`` with ``length = 1 + len(body)``; every integer
is little-endian and every float an IEEE-754 binary32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence

PROTOCOL_VERSION = 1
RESUME_TOKEN_BYTES = 16
FRAME_BYTES_MAX_DEFAULT = 1 << 20

# Client to server.
HELLO, OBSERVE, GOODBYE, LIST_SPACES, CHECK_IDS, CREATE_SPACE, RECALL = (
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10)
# Server to client.
WELCOME, ACK, REJECT, FLOW_CONTROL, SERVER_GOODBYE, ERROR, SPACE_LIST, CHECK_RESULT, \
    SPACE_DEFINED, RECALL_RESULT = 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x50

REJECT_CODES = {
    1: "invalid_space", 2: "invalid_id", 3: "dimension_mismatch", 4: "non_finite_embedding",
    5: "what_too_long", 6: "confidence_out_of_range", 7: "dimension_too_large",
    8: "overloaded", 9: "storage_full", 10: "empty_embedding", 11: "too_many_spaces",
    12: "forbidden",
}
RETRYABLE_REJECTS = {8, 9}
ERROR_CODES = {
    1: "unsupported_version", 2: "malformed_frame", 3: "unexpected_frame",
    4: "unknown_resume_token", 5: "shutting_down", 6: "storage_failed",
    7: "unauthenticated", 8: "forbidden", 9: "limit_reached",
}
UNKNOWN_RESUME_TOKEN = 4
RECALL_STATUS = {
    0: "ok", 1: "unknown_space", 2: "dimension_mismatch", 3: "invalid_query",
    4: "future_lsn", 5: "failed", 6: "unknown_id", 7: "forbidden",
}
CONSISTENCY = {"read_your_writes": 0, "as_of": 1, "eventual": 2}


class ProtocolError(Exception):
    """Bytes that are not a valid frame."""


@dataclass
class Observation:
    space: str
    id: str
    when_unix_ns: int
    confidence: float
    what: str
    embedding: Sequence[float]


@dataclass
class Limits:
    frame_bytes_max: int
    space_name_bytes_max: int
    id_bytes_max: int
    what_bytes_max: int
    embedding_dim_max: int
    inflight_bytes_max: int


@dataclass
class Welcome:
    session_id: int
    resume_token: bytes
    last_acked_seq: int
    limits: Limits


@dataclass
class Ack:
    seq: int
    lsn: int


@dataclass
class Reject:
    seq: int
    code: int
    field: str
    expected: str
    got: str

    @property
    def name(self) -> str:
        return REJECT_CODES.get(self.code, f"reject_{self.code}")

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_REJECTS


@dataclass
class FlowControl:
    credits: int
    state: int
    retry_after_ms: int


@dataclass
class ServerGoodbye:
    last_acked_seq: int


@dataclass
class Error:
    code: int
    message: str

    @property
    def name(self) -> str:
        return ERROR_CODES.get(self.code, f"error_{self.code}")


@dataclass
class SpaceEntry:
    name: str
    dim: int
    observations: int
    last_lsn: int


@dataclass
class SpaceList:
    request_id: int
    durable_lsn: int
    spaces: list[SpaceEntry]


@dataclass
class CheckResult:
    request_id: int
    found: list[bool]


@dataclass
class Hit:
    lsn: int
    score: float
    when_unix_ns: int
    confidence: float
    id: str
    what: str


@dataclass
class RecallResult:
    request_id: int
    status: int
    message: str
    as_of_lsn: int
    more: bool
    hits: list[Hit] = field(default_factory=list)

    @property
    def status_name(self) -> str:
        return RECALL_STATUS.get(self.status, f"status_{self.status}")


def _str(n_format: str, text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(n_format, len(raw)) + raw


def _frame(kind: int, body: bytes) -> bytes:
    return struct.pack("<IB", 1 + len(body), kind) + body


def _floats(values: Sequence[float]) -> bytes:
    return struct.pack(f"<I{len(values)}f", len(values), *values)


def hello(client_name: str, resume_token: Optional[bytes],
          auth_token: Optional[str] = None) -> bytes:
    """Hello; flags bit 0: a resume token follows, bit 1: an auth token (str8) follows."""
    body = struct.pack("<H", PROTOCOL_VERSION) + _str("<B", client_name)
    flags = (1 if resume_token is not None else 0) | (2 if auth_token is not None else 0)
    body += bytes([flags])
    if resume_token is not None:
        assert len(resume_token) == RESUME_TOKEN_BYTES
        body += resume_token
    if auth_token is not None:
        body += _str("<B", auth_token)
    return _frame(HELLO, body)


def observe(seq: int, o: Observation) -> bytes:
    body = (struct.pack("<Q", seq) + _str("<B", o.space) + _str("<H", o.id)
            + struct.pack("<qf", o.when_unix_ns, o.confidence) + _str("<I", o.what)
            + _floats(o.embedding))
    return _frame(OBSERVE, body)


def goodbye(last_seq: int) -> bytes:
    return _frame(GOODBYE, struct.pack("<Q", last_seq))


def list_spaces(request_id: int) -> bytes:
    return _frame(LIST_SPACES, struct.pack("<Q", request_id))


def check_ids(request_id: int, space: str, ids: Sequence[str]) -> bytes:
    body = struct.pack("<Q", request_id) + _str("<B", space) + struct.pack("<I", len(ids))
    body += b"".join(_str("<H", i) for i in ids)
    return _frame(CHECK_IDS, body)


def recall(request_id: int, space: str, k: int, embedding: Sequence[float] = (),
           query_id: str = "", ef: int = 0, consistency: str = "read_your_writes",
           as_of_lsn: int = 0) -> bytes:
    body = (struct.pack("<Q", request_id) + _str("<B", space)
            + struct.pack("<HHBQ", k, ef, CONSISTENCY[consistency], as_of_lsn)
            + _str("<H", query_id) + _floats(embedding))
    return _frame(RECALL, body)


class _Body:
    """Reads a frame's fields in order; running past the end is a ProtocolError."""

    def __init__(self, kind: int, data: bytes):
        self.kind, self.data, self.at = kind, data, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ProtocolError(f"frame {self.kind:#04x} is truncated")
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def bytes(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ProtocolError(f"frame {self.kind:#04x} is truncated")
        raw = self.data[self.at:self.at + n]
        self.at += n
        return raw

    def str(self, n_format: str) -> str:
        return self.bytes(self.take(n_format)).decode("utf-8")

    def done(self) -> None:
        if self.at != len(self.data):
            raise ProtocolError(f"frame {self.kind:#04x} has {len(self.data) - self.at} extra bytes")


def decode(kind: int, data: bytes):
    """A server frame from its type and body."""
    b = _Body(kind, data)
    if kind == WELCOME:
        session_id = b.take("<Q")
        token = b.bytes(RESUME_TOKEN_BYTES)
        last = b.take("<Q")
        limits = Limits(*b.take("<IBHIII"))
        frame = Welcome(session_id, token, last, limits)
    elif kind == ACK:
        frame = Ack(*b.take("<QQ"))
    elif kind == REJECT:
        seq, code = b.take("<QH")
        frame = Reject(seq, code, b.str("<B"), b.str("<H"), b.str("<H"))
    elif kind == FLOW_CONTROL:
        frame = FlowControl(*b.take("<IBI"))
    elif kind == SERVER_GOODBYE:
        frame = ServerGoodbye(b.take("<Q"))
    elif kind == ERROR:
        code = b.take("<H")
        frame = Error(code, b.str("<H"))
    elif kind == SPACE_LIST:
        request_id, durable, count = b.take("<QQI")
        spaces = []
        for _ in range(count):
            name = b.str("<B")
            dim, observations, last_lsn = b.take("<IQQ")
            spaces.append(SpaceEntry(name, dim, observations, last_lsn))
        frame = SpaceList(request_id, durable, spaces)
    elif kind == CHECK_RESULT:
        request_id, count = b.take("<QI")
        bits = b.bytes((count + 7) // 8)
        frame = CheckResult(request_id, [bool(bits[i // 8] >> (i % 8) & 1) for i in range(count)])
    elif kind == RECALL_RESULT:
        request_id, status = b.take("<QH")
        message = b.str("<H")
        as_of, more, count = b.take("<QBH")
        hits = []
        for _ in range(count):
            lsn, score, when, confidence = b.take("<Qfqf")
            hits.append(Hit(lsn, score, when, confidence, b.str("<H"), b.str("<I")))
        frame = RecallResult(request_id, status, message, as_of, bool(more), hits)
    elif kind == SPACE_DEFINED:
        return None  # answers CreateSpace, which this client does not send
    else:
        raise ProtocolError(f"unknown frame type {kind:#04x}")
    b.done()
    return frame
