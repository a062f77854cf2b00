"""An asyncio client for engram's native protocol, engram/1 over QUIC (aioquic).

``ObservationStream`` keeps every observation until the server acknowledges it, which
it does only once the observation is durable. After a lost connection it reconnects with
exponential backoff and jitter and resumes its session with the resume token (or starts
a new one if the server restarted), resending everything not yet acknowledged; the
server's dedupe stores a resent (space, id) once.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import struct
from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration

from . import protocol as p

ALPN = "engram/1"
PENDING_MAX_DEFAULT = 4096
# Observe frames are gathered up to this many bytes before one write: aioquic spends its
# time per write and per packet, and one frame per write cost a packet per observation.
WRITE_CHUNK_BYTES = 64 << 10
# The seq of a pending observation not yet sent in the current session: no ack settles it.
UNSENT = 2**64


class EngramError(Exception):
    """Base of this client's errors."""


class ServerError(EngramError):
    """The server ended the session with an Error frame."""

    def __init__(self, error: p.Error):
        super().__init__(f"{error.name}: {error.message}")
        self.code, self.name, self.message = error.code, error.name, error.message


class ConnectionLost(EngramError):
    """The connection or the session ended before an answer came."""


class Refused(EngramError):
    """The server refused an observation for good: what was wrong, expected and got."""

    def __init__(self, observation: p.Observation, reject: p.Reject):
        super().__init__(f"{observation.id}: {reject.name}: {reject.field}: "
                         f"expected {reject.expected}, got {reject.got}")
        self.observation, self.code, self.name = observation, reject.code, reject.name
        self.field, self.expected, self.got = reject.field, reject.expected, reject.got


@dataclass
class Backoff:
    initial: float = 0.05
    maximum: float = 5.0
    attempts_max: int = 60

    def delay(self, attempt: int) -> float:
        base = min(self.initial * 2 ** min(attempt, 16), self.maximum)
        return base * (1 + random.random() * 0.5)


@dataclass
class Options:
    host: str
    port: int
    cert_der: bytes
    client_name: str = "engram-python"
    server_name: str = "localhost"
    # A handshake with a server that is down waits this long, not the idle timeout.
    connect_timeout: float = 5.0
    idle_timeout: float = 10.0
    # The token of a server with an auth file.
    auth_token: Optional[str] = None

    def configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                   server_name=self.server_name,
                                   idle_timeout=self.idle_timeout)
        # The server's certificate is the only trusted root.
        config.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(self.cert_der).encode())
        return config


class Session:
    """One engram/1 session: a QUIC connection and one bidirectional stream."""

    def __init__(self, options: Options):
        self.options = options
        self.welcome: Optional[p.Welcome] = None
        self.acked_seq = 0
        self.rejects: list[p.Reject] = []
        self.ended: Optional[BaseException] = None
        self.load_state = 0
        self.retry_after_ms = 0
        self._progress = asyncio.Condition()
        self._answers: dict[int, asyncio.Future] = {}
        self._recall_hits: dict[int, list[p.Hit]] = {}
        self._next_request = 1
        self._next_seq = 1
        self._context = None
        self._protocol: Optional[QuicConnectionProtocol] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._follower: Optional[asyncio.Task] = None
        self._gathered = bytearray()

    @classmethod
    async def connect(cls, options: Options, resume_token: Optional[bytes] = None) -> "Session":
        session = cls(options)
        session._context = connect(options.host, options.port,
                                   configuration=options.configuration())
        try:
            session._protocol = await asyncio.wait_for(session._context.__aenter__(),
                                                       options.connect_timeout)
        except BaseException:
            session._context = None
            raise
        try:
            reader, session._writer = await session._protocol.create_stream()
            session._writer.write(p.hello(options.client_name, resume_token, options.auth_token))
            first = await _read_frame(reader)
            if isinstance(first, p.Error):
                raise ServerError(first)
            if not isinstance(first, p.Welcome):
                raise EngramError(f"expected Welcome, got {first!r}")
            session.welcome = first
            session.acked_seq = first.last_acked_seq
            session._next_seq = first.last_acked_seq + 1
            session._follower = asyncio.create_task(session._follow(reader))
        except BaseException:
            await session.abort()
            raise
        return session

    @property
    def resume_token(self) -> bytes:
        assert self.welcome is not None
        return self.welcome.resume_token

    def next_seq(self) -> int:
        return self._next_seq

    async def send(self, observation: p.Observation) -> int:
        """Writes one Observe frame; returns its seq."""
        if self.ended is not None:
            raise ConnectionLost(str(self.ended))
        seq = self._next_seq
        self._next_seq += 1
        self._gathered += p.observe(seq, observation)
        if len(self._gathered) >= WRITE_CHUNK_BYTES:
            await self._write(b"")
        return seq

    async def _write(self, frame: bytes) -> None:
        """Writes what `send` gathered, then `frame`."""
        self._gathered += frame
        data, self._gathered = bytes(self._gathered), bytearray()
        if not data:
            return
        try:
            self._writer.write(data)
            await self._writer.drain()
        except Exception as e:  # the stream or connection went away under the write
            raise ConnectionLost(str(e)) from e

    async def wait_acked(self, seq: int) -> None:
        """Waits until ``seq`` is acknowledged; ConnectionLost if the session ends first."""
        if self._gathered and self.ended is None:
            await self._write(b"")
        async with self._progress:
            await self._progress.wait_for(lambda: self.acked_seq >= seq or self.ended is not None)
        if self.acked_seq < seq:
            raise ConnectionLost(str(self.ended))

    async def take_rejects(self) -> list[p.Reject]:
        rejects, self.rejects = self.rejects, []
        return rejects

    async def recall(self, space: str, k: int, embedding: Sequence[float] = (),
                     query_id: str = "", ef: int = 0,
                     consistency: str = "read_your_writes", as_of_lsn: int = 0) -> p.RecallResult:
        request_id = self._request()
        self._recall_hits[request_id] = []
        return await self._ask(request_id, p.recall(request_id, space, k, embedding, query_id,
                                                    ef, consistency, as_of_lsn))

    async def list_spaces(self) -> p.SpaceList:
        request_id = self._request()
        return await self._ask(request_id, p.list_spaces(request_id))

    async def check_ids(self, space: str, ids: Sequence[str]) -> list[bool]:
        request_id = self._request()
        result = await self._ask(request_id, p.check_ids(request_id, space, ids))
        return result.found

    async def goodbye(self) -> None:
        """Says goodbye after the last observation sent and waits for the server's."""
        if self.ended is None:
            await self._write(p.goodbye(self._next_seq - 1))
            async with self._progress:
                await self._progress.wait_for(lambda: self.ended is not None)
        await self.abort()

    async def abort(self) -> None:
        """Drops the connection, as a network failure would."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass  # a stream the server reset is closed already
        if self._protocol is not None:
            self._protocol.close()
        if self._context is not None:
            context, self._context = self._context, None
            try:
                await context.__aexit__(None, None, None)
            except Exception:
                pass
        if self._follower is not None and self._follower is not asyncio.current_task():
            self._follower.cancel()
        await self._end(ConnectionLost("aborted"))

    def _request(self) -> int:
        request_id = self._next_request
        self._next_request += 1
        return request_id

    async def _ask(self, request_id: int, frame: bytes):
        if self.ended is not None:
            raise ConnectionLost(str(self.ended))
        future = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        await self._write(frame)
        return await future

    async def _end(self, why: BaseException) -> None:
        async with self._progress:
            if self.ended is None:
                self.ended = why
            self._progress.notify_all()
        for future in self._answers.values():
            if not future.done():
                future.set_exception(ConnectionLost(str(why)))
        self._answers.clear()

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        why: BaseException = ConnectionLost("the server closed the stream")
        try:
            while True:
                frame = await _read_frame(reader)
                if isinstance(frame, p.Ack):
                    async with self._progress:
                        self.acked_seq = max(self.acked_seq, frame.seq)
                        self._progress.notify_all()
                elif isinstance(frame, p.Reject):
                    self.rejects.append(frame)
                elif isinstance(frame, p.FlowControl):
                    self.load_state, self.retry_after_ms = frame.state, frame.retry_after_ms
                elif isinstance(frame, p.RecallResult):
                    hits = self._recall_hits.setdefault(frame.request_id, [])
                    hits.extend(frame.hits)
                    if not frame.more:
                        frame.hits = self._recall_hits.pop(frame.request_id)
                        self._answer(frame.request_id, frame)
                elif isinstance(frame, (p.SpaceList, p.CheckResult)):
                    self._answer(frame.request_id, frame)
                elif isinstance(frame, p.ServerGoodbye):
                    why = ConnectionLost("the server said goodbye")
                    break
                elif isinstance(frame, p.Error):
                    why = ServerError(frame)
                    break
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            why = ConnectionLost(f"the connection was lost: {e!r}")
        except asyncio.CancelledError:
            why = ConnectionLost("aborted")
        await self._end(why)

    def _answer(self, request_id: int, frame) -> None:
        future = self._answers.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(frame)


async def _read_frame(reader: asyncio.StreamReader):
    header = await reader.readexactly(5)
    length, kind = struct.unpack("<IB", header)
    if length == 0 or length > p.FRAME_BYTES_MAX_DEFAULT * 16:
        raise p.ProtocolError(f"frame length {length}")
    return p.decode(kind, await reader.readexactly(length - 1))


class ObservationStream:
    """Streams observations through lost connections and server restarts."""

    def __init__(self, options: Options, backoff: Backoff = Backoff(),
                 pending_max: int = PENDING_MAX_DEFAULT):
        self.options, self.backoff, self.pending_max = options, backoff, max(1, pending_max)
        self.session: Optional[Session] = None
        self.token: Optional[bytes] = None
        # (seq in the current session, observation), oldest first.
        self.pending: deque[tuple[int, p.Observation]] = deque()
        self.acked: list[p.Observation] = []
        self.refused: list[Refused] = []
        self.connects = 0

    @classmethod
    async def connect(cls, options: Options, **kwargs) -> "ObservationStream":
        stream = cls(options, **kwargs)
        await stream._reconnect()
        return stream

    async def send(self, observation: p.Observation) -> None:
        """Queues and sends one observation; waits for acks past ``pending_max``."""
        while len(self.pending) >= self.pending_max:
            await self._wait_acked(self.pending[0][0])
        while True:
            try:
                seq = await self.session.send(observation)
                self.pending.append((seq, observation))
                return
            except ConnectionLost:
                await self._reconnect()

    async def flush(self) -> None:
        """Waits until everything sent is acknowledged (or refused)."""
        while self.pending:
            await self._wait_acked(self.pending[-1][0])

    def take_acked(self) -> list[p.Observation]:
        acked, self.acked = self.acked, []
        return acked

    def take_refused(self) -> list[Refused]:
        refused, self.refused = self.refused, []
        return refused

    async def abort_connection(self) -> None:
        """Drops the connection, as a network failure would; the stream resumes."""
        if self.session is not None:
            await self.session.abort()

    async def close(self) -> None:
        await self.flush()
        if self.session is not None:
            await self.session.goodbye()

    async def _wait_acked(self, seq: int) -> None:
        try:
            await self.session.wait_acked(seq)
            await self._settle()
        except ConnectionLost:
            await self._reconnect()

    async def _settle(self) -> None:
        session = self.session
        rejects = {r.seq: r for r in await session.take_rejects()}
        retry = []
        while self.pending and self.pending[0][0] <= session.acked_seq:
            seq, observation = self.pending.popleft()
            reject = rejects.get(seq)
            if reject is None:
                self.acked.append(observation)
            elif reject.retryable:
                retry.append(observation)
            else:
                self.refused.append(Refused(observation, reject))
        if not retry:
            return
        # Overloaded or a full disk: they go again after the server's hint. Should the
        # session be gone, they wait as unsent and the reconnection resends them.
        await asyncio.sleep(max(session.retry_after_ms, 10) / 1000)
        for observation in retry:
            try:
                self.pending.append((await session.send(observation), observation))
            except ConnectionLost:
                self.pending.append((UNSENT, observation))

    async def _reconnect(self) -> None:
        """Connects, resuming the session if the server still knows it, and resends
        every observation not acknowledged."""
        if self.session is not None:
            old = self.session
            await self._settle()  # what it acknowledged before it was lost still counts
            self.session = None
            await old.abort()
        failures = 0
        while True:
            try:
                session = await Session.connect(self.options, self.token)
            except ServerError as e:
                if e.code == p.UNKNOWN_RESUME_TOKEN:
                    # The server restarted: start over; dedupe keeps resends exactly-once.
                    self.token = None
                    continue
                raise
            except (ConnectionError, OSError, asyncio.TimeoutError, ConnectionLost,
                    EngramError) as e:
                failures += 1
                if failures >= self.backoff.attempts_max:
                    raise ConnectionLost(f"gave up after {failures} attempts: {e!r}") from e
                await asyncio.sleep(self.backoff.delay(failures - 1))
                continue
            self.connects += 1
            resumed = self.token == session.resume_token
            self.token = session.resume_token
            self.session = session
            if resumed:
                await self._settle()
            try:
                resend = [o for _, o in self.pending]
                self.pending.clear()
                for observation in resend:
                    self.pending.append((await session.send(observation), observation))
                return
            except ConnectionLost:
                self.pending.extend((UNSENT, o) for o in resend[len(self.pending):])
                await session.abort()
                self.session = None
                failures += 1
                await asyncio.sleep(self.backoff.delay(failures - 1))
