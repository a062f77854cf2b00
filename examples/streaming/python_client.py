"""Streams 1,000 observations to an engram server over QUIC with the Python client
(clients/python, `pip install ./clients/python`), waits until every one is durable, and
recalls one of them by its own embedding.

    python3 examples/streaming/python_client.py [HOST:PORT] [CERT]

HOST:PORT defaults to 127.0.0.1:7400 and CERT to ./engram-data/tls/cert.der, where
`engram serve` on its defaults listens and writes its certificate.
"""

import asyncio
import math
import sys
import time
from pathlib import Path

from engram_client import Observation, ObservationStream, Options, Session

SPACE = "python-example"
DIM = 32
COUNT = 1000


def embedding(n: int) -> list[float]:
    return [math.sin(n * 0.37 + d * 1.3) + (2.0 if d == n % DIM else 0.0) for d in range(DIM)]


async def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7400"
    cert = Path(sys.argv[2] if len(sys.argv) > 2 else "./engram-data/tls/cert.der")
    host, port = addr.rsplit(":", 1)
    options = Options(host=host, port=int(port), cert_der=cert.read_bytes(),
                      client_name="python-example")

    # The stream keeps each observation until its durable ack, and reconnects and
    # resends by itself if the connection is lost.
    stream = await ObservationStream.connect(options)
    now = time.time_ns()
    for n in range(COUNT):
        await stream.send(Observation(space=SPACE, id=f"example-{n}", when_unix_ns=now + n,
                                      confidence=0.9, what=f"example observation {n}",
                                      embedding=embedding(n)))
    await stream.flush()
    refused = stream.take_refused()
    if refused:
        print(f"refused: {refused}")
        return 1
    print(f"acknowledged (durable): {len(stream.take_acked())}")
    await stream.close()

    session = await Session.connect(options)
    result = await session.recall(SPACE, 3, embedding(500))
    await session.goodbye()
    top = result.hits[0].id if result.hits else "(none)"
    print(f"recall of example-500's embedding: first {top}")
    return 0 if top == "example-500" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
