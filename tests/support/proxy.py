"""A TCP proxy for fault injection: forwards to a server, and can swallow the reply to one marked request."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from typing import Self


class _Proxy(abc.ABC):
    """A TCP proxy on a free local port in front of a Redis on `upstream_port`; subclasses forward in _handle."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    @abc.abstractmethod
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection."""


class ReplyDroppingProxy(_Proxy):
    """Forwards bytes both ways; when armed, the first request containing `marker` reaches the server
    but its reply never reaches the client: the proxy aborts that client connection instead."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.marker: bytes | None = None
        self.dropped = 0

    def arm(self, marker: bytes) -> None:
        self.marker = marker.lower()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        doomed = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if self.marker is not None and self.marker in data.lower():
                    self.marker = None  # one shot
                    doomed.set()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if doomed.is_set():
                    # The server has run the command; its answer is lost with the connection.
                    self.dropped += 1
                    writer.transport.abort()
                    up_writer.close()
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)


class ErrorReplyProxy(_Proxy):
    """Forwards bytes both ways; while `error` is set, a client write holding `marker` is not forwarded and
    gets that error reply instead, once per marker in it (the errors Redis sends only in states a test cannot
    easily reach: LOADING, TRYAGAIN, CLUSTERDOWN)."""

    def __init__(self, upstream_port: int, marker: bytes = b"FCALL") -> None:
        super().__init__(upstream_port)
        self.marker = marker
        self.error: bytes | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def to_server() -> None:
            while data := await reader.read(65536):
                if self.error is not None and self.marker in data:
                    writer.write((b"-" + self.error + b"\r\n") * data.count(self.marker))
                    await writer.drain()
                    continue
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)
