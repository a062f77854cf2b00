"""The Python client against a real `engram serve` (ENGRAM_BIN, else target/debug/engram),
over real QUIC: durable acks, typed refusals, resumption after a dropped connection, and
a SIGKILLed server restarted mid-stream, with nothing lost or stored twice."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from engram_client import Observation, ObservationStream, Options, ServerError, Session

ROOT = Path(__file__).resolve().parents[3]
DIM = 8


def embedding(n: int) -> list[float]:
    return [math.sin(n * 0.37 + d * 1.3) + (2.0 if d == n % DIM else 0.0) for d in range(DIM)]


def observation(space: str, n: int) -> Observation:
    return Observation(space=space, id=f"py{n}", when_unix_ns=1_700_000_000_000_000_000 + n,
                       confidence=0.5, what=f"python episode {n}", embedding=embedding(n))


class Server:
    """`engram serve` on loopback; restartable on the same ports."""

    def __init__(self, data_dir: Path, extra: tuple[str, ...] = ()):
        self.data_dir = data_dir
        self.extra = list(extra)
        self.binary = os.environ.get("ENGRAM_BIN", str(ROOT / "target/debug/engram"))
        self.quic, self.http = "127.0.0.1:0", "127.0.0.1:0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "serve", "--data-dir", str(self.data_dir), "--quic-addr", self.quic,
             "--http-addr", self.http, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RUST_LOG": "info"})
        seen = []
        for line in self.process.stderr:
            seen.append(line)
            if "engram is up" in line:
                self.quic = re.search(r"quic_addr=(\S+)", line).group(1)
                self.http = re.search(r"http_addr=(\S+)", line).group(1)
                return
        raise RuntimeError(f"the server did not come up: {''.join(seen)}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def options(self) -> Options:
        host, port = self.quic.rsplit(":", 1)
        cert = (self.data_dir / "tls" / "cert.der").read_bytes()
        return Options(host=host, port=int(port), cert_der=cert, client_name="pytest")


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "data")
    server.start()
    yield server
    server.stop()


async def stored(server: Server, space: str, ids: list[str]) -> tuple[list[bool], int]:
    """Which ids the server stores, and its count for the space."""
    session = await Session.connect(server.options())
    try:
        found = await session.check_ids(space, ids)
        listing = await session.list_spaces()
    finally:
        await session.goodbye()
    count = next((s.observations for s in listing.spaces if s.name == space), 0)
    return found, count


async def test_streams_a_thousand_with_durable_acks_and_recalls_one(server):
    stream = await ObservationStream.connect(server.options(), pending_max=256)
    for n in range(1000):
        await stream.send(observation("py", n))
    await stream.flush()
    acked = stream.take_acked()
    assert len(acked) == 1000
    assert stream.take_refused() == []
    found, count = await stored(server, "py", [o.id for o in acked])
    assert all(found) and count == 1000

    session = await Session.connect(server.options())
    result = await session.recall("py", 3, embedding(321))
    by_id = await session.recall("py", 1, query_id="py321")
    await session.goodbye()
    assert result.status_name == "ok"
    assert result.hits[0].id == "py321"
    assert result.hits[0].what == "python episode 321"
    assert result.hits[0].when_unix_ns == 1_700_000_000_000_000_321
    assert by_id.hits[0].id == "py321"
    await stream.close()


async def test_a_refused_observation_names_what_was_wrong_and_the_stream_goes_on(server):
    stream = await ObservationStream.connect(server.options())
    await stream.send(observation("strict", 1))
    short = observation("strict", 2)
    short.embedding = [1.0, 2.0]
    await stream.send(short)
    await stream.send(observation("strict", 3))
    await stream.flush()
    refused = stream.take_refused()
    assert [r.observation.id for r in refused] == ["py2"]
    assert refused[0].name == "dimension_mismatch"
    assert refused[0].field == "embedding"
    assert refused[0].got == "dimension 2"
    assert [o.id for o in stream.take_acked()] == ["py1", "py3"]
    _, count = await stored(server, "strict", [])
    assert count == 2
    await stream.close()


async def test_a_dropped_connection_resumes_the_session_without_loss_or_duplicates(server):
    stream = await ObservationStream.connect(server.options(), pending_max=128)
    for n in range(300):
        await stream.send(observation("resume", n))
        if n == 150:
            await stream.abort_connection()
    await stream.flush()
    assert len(stream.take_acked()) == 300
    assert stream.connects >= 2
    found, count = await stored(server, "resume", [f"py{n}" for n in range(300)])
    assert all(found) and count == 300
    await stream.close()


async def test_a_sigkilled_server_restarted_mid_stream_loses_nothing_acknowledged(server):
    stream = await ObservationStream.connect(server.options(), pending_max=128)
    acked: list[str] = []
    for n in range(2000):
        await stream.send(observation("chaos", n))
        acked.extend(o.id for o in stream.take_acked())
        if n == 1200:
            server.kill9()
            server.start()  # same ports, same certificate
    await stream.flush()
    acked.extend(o.id for o in stream.take_acked())
    assert sorted(acked) == sorted(f"py{n}" for n in range(2000)), "each acknowledged once"
    assert stream.connects >= 2, "reconnected to the restarted server"
    found, count = await stored(server, "chaos", acked)
    assert all(found), "nothing acknowledged is lost"
    assert count == 2000, "nothing is stored twice"
    await stream.close()


async def test_a_token_is_presented_in_hello_and_confines_the_session(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('''
[[token]]
name = "py"
token = "python-token-0123456789"
spaces = ["py-*"]
rights = ["read", "write"]
''')
    server = Server(tmp_path / "data", ("--auth-file", str(tokens)))
    server.start()
    try:
        with pytest.raises(ServerError) as refused:
            await Session.connect(server.options())
        assert refused.value.code == 7  # Unauthenticated

        options = server.options()
        options.auth_token = "python-token-0123456789"
        stream = await ObservationStream.connect(options)
        await stream.send(observation("py-mine", 1))
        await stream.send(observation("elsewhere", 2))
        await stream.flush()
        assert [(o.space, o.id) for o in stream.take_acked()] == [("py-mine", "py1")]
        assert [(r.observation.id, r.name) for r in stream.take_refused()] == [
            ("py2", "forbidden")]
        await stream.close()
    finally:
        server.stop()
