"""A shared run's batch writer in a process of its own (PostgreSQL only). PROTOTYPE.

The parent sends each batch as plain tuples (pickled: C) with each target's claim token; the
child runs the same fenced transaction `_FencedStore` runs on the loop, and replies with how many
were written. Frames on the child's stdin/stdout: 4-byte big-endian length, then a pickle.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
import sys
from collections.abc import Sequence
from typing import Any

from crawler.errors import StoreError
from crawler.models import FetchedImage, ImageRows, Outcome, Target, TargetResult

_HEADER = struct.Struct(">I")


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _encode(result: TargetResult, token: int) -> tuple[Any, ...]:
    rows = result.rows
    form: tuple[Any, ...] | None
    if rows is None:
        form = None
    elif type(rows) is FetchedImage:
        form = (
            0, rows.region_id, rows.image_id, rows.raw, rows.digest, rows.image,
            rows.unencodable, rows.naive_tz, rows.rows_from,
        )  # fmt: skip
    else:
        assert isinstance(rows, ImageRows)
        form = (1, rows.image, rows.disks, rows.attachments, rows.tags)
    target = result.target
    return (
        target.region_id, target.image_id, str(result.outcome), result.attempts,
        result.finished_at, result.http_status, result.error_status, result.error_message,
        result.request_id, form, token,
    )  # fmt: skip


def _decode(item: tuple[Any, ...]) -> tuple[TargetResult, int]:
    region, image, outcome, attempts, finished, http, error, message, request, form, token = item
    rows: ImageRows | FetchedImage | None
    if form is None:
        rows = None
    elif form[0] == 0:
        rows = FetchedImage(*form[1:])
    else:
        rows = ImageRows(*form[1:])
    result = TargetResult(
        Target(region, image), Outcome(outcome), attempts, finished, http, error, message,
        request, rows,
    )  # fmt: skip
    return result, token


class WriterProcess:
    """The parent's end: one child, one batch at a time."""

    def __init__(self, process: Any, reader: Any, writer: Any) -> None:
        self._process = process
        self._reader = reader
        self._writer = writer

    @classmethod
    async def start(cls, url: str) -> WriterProcess:
        import multiprocessing
        import os

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        context = multiprocessing.get_context("fork")
        process = context.Process(
            target=_child_main, args=(to_child_r, from_child_w, to_child_w, from_child_r),
            daemon=True,
        )
        process.start()
        os.close(to_child_r)
        os.close(from_child_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child_r, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(to_child_w, "wb", 0)
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self = cls(process, reader, writer)
        await self._send({"url": url})
        return self

    async def _send(self, value: object) -> None:
        self._writer.write(_frame(value))
        await self._writer.drain()

    async def _receive(self) -> Any:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            data = await self._reader.readexactly(_HEADER.unpack(header)[0])
        except asyncio.IncompleteReadError:
            raise StoreError("the writer process ended") from None
        return pickle.loads(data)

    async def write(
        self, run_id: int, owner: str, results: Sequence[TargetResult], tokens: Sequence[int]
    ) -> int:
        await self._send((run_id, owner, [_encode(r, t) for r, t in zip(results, tokens)]))
        reply = await self._receive()
        if reply[0] == "error":
            raise StoreError(reply[1])
        return int(reply[1])

    async def close(self) -> None:
        self._writer.close()
        await asyncio.to_thread(self._process.join)


def _read_frame(stream: Any) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    return pickle.loads(stream.read(size))


def _child_main(read_fd: int, write_fd: int, *parent_fds: int) -> None:
    import os

    for fd in parent_fds:
        os.close(fd)
    stdin = os.fdopen(read_fd, "rb")
    stdout = os.fdopen(write_fd, "wb")
    asyncio.run(_serve(stdin, stdout))


async def _serve(stdin: Any = None, stdout: Any = None) -> None:
    from crawler.claims import FENCE_SQL
    from crawler.store.database import _parse_url, database_name
    from crawler.store.dialects import dialect_for
    from crawler.store.ledger import Store
    from crawler.store.timestamps import utc_now

    if stdin is None:
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    hello = _read_frame(stdin)
    if hello is None:
        return
    parsed = _parse_url(hello["url"])
    dialect = dialect_for(parsed)
    from sqlalchemy.ext.asyncio import create_async_engine

    from crawler.store.dialects.postgresql import IDLE_IN_TRANSACTION_MS

    # PROTOTYPE: one connection runs every statement, so psycopg prepares each after 5 runs
    # and the server may switch it to a generic plan; keep custom plans, as main's rotating
    # pool mostly gets.
    engine = create_async_engine(
        parsed, paramstyle="format", pool_pre_ping=True,
        connect_args={
            "application_name": "crawler writer",
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
            " -c plan_cache_mode=force_custom_plan",
        },
    )  # fmt: skip
    store = Store(engine, dialect, database_name(parsed), utc_now)
    try:
        while True:
            request = _read_frame(stdin)
            if request is None:
                return
            run_id, owner, items = request
            decoded = [_decode(item) for item in items]
            results = [result for result, _ in decoded]
            tokens = {result.target: token for result, token in decoded}

            async def fence(conn: Any, batch: Sequence[TargetResult]) -> list[TargetResult]:
                params = {
                    "run_id": run_id, "owner": owner,
                    "regions": [r.target.region_id for r in batch],
                    "images": [r.target.image_id for r in batch],
                    "tokens": [tokens[r.target] for r in batch],
                }  # fmt: skip
                rows = (await conn.exec_driver_sql(FENCE_SQL, params)).all()
                accepted = {(str(region), str(image)) for region, image in rows}
                return [r for r in batch if (r.target.region_id, r.target.image_id) in accepted]

            try:
                written = await store.write_results(run_id, results, fence=fence)
                reply: tuple[Any, ...] = ("ok", written)
            except StoreError as exc:
                reply = ("error", str(exc))
            stdout.write(_frame(reply))
            stdout.flush()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(_serve())
