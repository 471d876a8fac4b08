"""One more try on a new connection when the server ended a worker's database session.

The server ends the session of a worker that is alive, or will be again: a paused worker's idle
transaction is cut off after `idle_in_transaction_session_timeout`, a worker that takes over its
lapsed leases ends its sessions (`crawler.claims`), the server restarts. `pool_pre_ping` replaces
a connection that died in the pool, not one lost while checked out, so a worker woken in the
middle of a claim died of that claim's dead connection (exit 3) instead of going on, depending on
where in its loop the pause had caught it. A short transaction the server rolled back with the
session (a claim, a look at the key's hold, a rate reservation) is run once more on a new
connection, as the writer does with a batch (`crawler.store.ledger`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def once_more_if_lost(attempt: Callable[[], Awaitable[T]], doing: str) -> T:
    """`attempt()`, run once more if the first try lost its connection (any other error, or a
    second loss, is raised). `attempt` must open its own connection or transaction."""
    try:
        return await attempt()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("lost the database connection to %s (%s); trying again", doing, exc.orig)
    return await attempt()
