"""Python client throughput: COUNT observations of DIM floats on one ObservationStream,
as fast as acks allow; prints one JSON line (obs/s from the first send to the last ack).

    python3 clients/python/bench.py HOST:PORT CERT [COUNT] [DIM]
"""

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from engram_client import Observation, ObservationStream, Options


async def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    cert = Path(sys.argv[2]).read_bytes()
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    dim = int(sys.argv[4]) if len(sys.argv) > 4 else 384
    rng = random.Random(1)
    vectors = [[rng.uniform(-1, 1) for _ in range(dim)] for _ in range(256)]
    stream = await ObservationStream.connect(
        Options(host=host, port=int(port), cert_der=cert, client_name="python-bench"))
    started = time.perf_counter()
    for n in range(count):
        await stream.send(Observation(space="python-bench", id=f"pb{n}", when_unix_ns=n,
                                      confidence=0.5, what="bench",
                                      embedding=vectors[n % len(vectors)]))
    await stream.flush()
    seconds = time.perf_counter() - started
    acked = len(stream.take_acked())
    await stream.close()
    print(json.dumps({"target": "python", "acked": acked, "seconds": seconds,
                      "obs_per_sec": acked / seconds, "dim": dim}))


asyncio.run(main())
