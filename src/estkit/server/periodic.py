"""A blocking job run every so often in a worker's executor, for as long as an
aiohttp application lives (the CRL's regeneration, the OCSP responder
certificate's renewal).  A failing run is logged; the next one still comes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress

from aiohttp import web

__all__ = ["every"]

log = logging.getLogger("estkit.server")


def every(seconds: float, job: Callable[[], object], what: str, *, first_now: bool = False
          ) -> Callable[[web.Application], AsyncIterator[None]]:
    """An ``app.cleanup_ctx`` entry running ``job`` every ``seconds`` (at once
    first with ``first_now``), off the event loop; ``what`` names it in the log."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        async def loop_forever() -> None:
            loop = asyncio.get_running_loop()
            if not first_now:
                await asyncio.sleep(seconds)
            while True:
                try:
                    await loop.run_in_executor(None, job)
                except Exception:
                    log.exception("%s failed", what)
                await asyncio.sleep(seconds)

        task = asyncio.create_task(loop_forever())
        yield
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    return ctx
