"""A TCP proxy in front of the gateway that can cut every connection, and
refuse new ones for a while: what a flaky network does to a client."""

from __future__ import annotations

import asyncio
from typing import Optional, Set
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, target_base: str) -> None:
        parts = urlsplit(target_base)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.server: Optional[asyncio.AbstractServer] = None
        self.writers: Set[asyncio.StreamWriter] = set()
        self.refusing = False
        self.cuts = 0
        self.accepted = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)

    def cut(self) -> None:
        """Drop every connection at once, as a network failure would (no close frame)."""
        self.cuts += 1
        for w in list(self.writers):
            transport = w.transport
            transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
