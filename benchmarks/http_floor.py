"""What one signed GET costs the CPU: the crawler's client, its HTTP layer, aiohttp, asyncio.

Against one simulator (`--latency-ms`, every target an existing image), four loops of
`--concurrency` workers each fetch `--requests` describeImage answers over keep-alive
connections, in one process, interleaved for `--rounds` rounds:

  client:  `ApiClient.describe_image` (signing, nonce, crawler.http, size cap, JSON, checks);
  http:    the same signed GET through `crawler.http.HttpSession` alone, body dropped;
  aiohttp: the same signed GET through an aiohttp session (the client's HTTP layer before
           issue 14), body read and dropped;
  asyncio: the same signed request bytes written on a plain `asyncio.Protocol`, one connection
           per worker, the answer framed by its Content-Length and dropped: the floor of any
           HTTP/1.1 client on this event loop (no TLS, proxy, chunking, timeouts or checks:
           an experiment, not a client).

Per loop: the process's CPU (`time.process_time`, its own threads) per request, median of the
rounds. The simulator is a separate process on the same cores.

    .venv/bin/python benchmarks/http_floor.py
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harness import ACCESS_KEY, SimulatorProcess, credentials_env, median, new_secret

from crawler.client import USER_AGENT, ApiClient, new_nonce, open_session, utc_now
from crawler.http import Origin
from crawler.signer import Signer

Target = tuple[str, str]


class _Framed(asyncio.Protocol):
    """Collects one answer at a time, framed by Content-Length (the simulator always sends it)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:") + len(b"content-length:")
        length = int(head[start : head.find(b"\r\n", start) if b"\r\n" in head[start:] else None])
        if len(self.buffer) >= end + 4 + length:
            del self.buffer[: end + 4 + length]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)


async def run_loop(
    kind: str, endpoint: str, signer: Signer, targets: Sequence[Target], n: int
) -> None:
    host = endpoint.removeprefix("http://")
    work: Iterator[Target] = iter(targets)
    async with open_session(concurrency=n) as session:
        api = ApiClient(session, endpoint, signer, timeout_s=30, max_response_bytes=1 << 20)
        loop = asyncio.get_running_loop()

        def signed(region: str, image: str) -> tuple[str, dict[str, str]]:
            path = f"/v1/regions/{region}/images/{image}"
            headers = signer.sign(
                method="GET", host=host, path=path, query="", region=region, at=utc_now(),
                nonce=new_nonce(),
            )  # fmt: skip
            return path, headers

        async def client_worker() -> None:
            for region, image in work:
                await api.describe_image(region, image)

        async def http_worker() -> None:
            name, port = host.rsplit(":", 1)
            origin = Origin("http", name, int(port))
            for region, image in work:
                path, headers = signed(region, image)
                headers["Host"] = host
                await session.get(origin, path, headers, timeout_s=30, max_body_bytes=1 << 20)

        async def aiohttp_worker(bare: Any) -> None:
            for region, image in work:
                path, headers = signed(region, image)
                async with bare.get(endpoint + path, headers=headers) as resp:
                    await resp.read()

        async def asyncio_worker() -> None:
            name, port = host.rsplit(":", 1)
            transport, protocol = await loop.create_connection(_Framed, name, int(port))
            try:
                for region, image in work:
                    path, headers = signed(region, image)
                    lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
                    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n"
                    protocol.waiter = loop.create_future()
                    transport.write(request.encode())
                    await protocol.waiter
            finally:
                transport.close()

        workers: dict[str, Callable[[], Awaitable[None]]] = {
            "client": client_worker, "http": http_worker, "asyncio": asyncio_worker,
        }  # fmt: skip
        if kind != "aiohttp":
            await asyncio.gather(*(workers[kind]() for _ in range(n)))
            return
        import aiohttp  # only here: the crawler itself no longer imports it

        connector = aiohttp.TCPConnector(limit=n, limit_per_host=0)
        headers = {"User-Agent": USER_AGENT}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as bare:
            await asyncio.gather(*(aiohttp_worker(bare) for _ in range(n)))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--requests", type=int, default=6000, help="requests per loop and round (6000)")
    add("--concurrency", type=int, default=64, help="workers (64)")
    add("--latency-ms", type=float, default=20.0, help="simulator latency (20)")
    add("--rounds", type=int, default=5, help="interleaved rounds (5)")
    args = parser.parse_args(argv)
    env = credentials_env(new_secret())
    signer = Signer(ACCESS_KEY, env["JDCLOUD_SECRET_KEY"])
    found: dict[str, list[float]] = {"client": [], "http": [], "aiohttp": [], "asyncio": []}
    with tempfile.TemporaryDirectory(prefix="http-floor-") as tmp:
        targets_path = Path(tmp) / "targets.csv"
        sim_args = [
            "--latency-ms", f"{args.latency_ms:g}", "--images-per-region",
            str(-(-args.requests // 4)), "--write-targets", str(targets_path),
            "--access-key", ACCESS_KEY,
        ]  # fmt: skip
        with SimulatorProcess(sim_args, env, start_timeout_s=300) as sim:
            with targets_path.open(encoding="utf-8", newline="") as stream:
                targets = [(row["region_id"], row["image_id"]) for row in csv.DictReader(stream)]
            targets = targets[: args.requests]
            for _ in range(args.rounds):
                for kind in found:
                    started = time.process_time()
                    asyncio.run(run_loop(kind, sim.url, signer, targets, args.concurrency))
                    found[kind].append(1000 * (time.process_time() - started) / len(targets))
    print(
        f"# {os.cpu_count()} CPUs; {len(targets):,} requests per loop at {args.latency_ms:g} ms, "
        f"{args.concurrency} in flight; the simulator shares the CPUs"
    )
    for kind, values in found.items():
        print(
            f"{kind:<8} {median(values):.3f} CPU ms per request "
            f"({min(values):.3f}-{max(values):.3f}, {args.rounds} rounds)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
