"""The read step's load generator against a tiny local HTTP/1.1 server: keep-alive, answers
counted by status, connections that fail counted and reopened (no timing asserted)."""

from __future__ import annotations

import asyncio

from bench.http_load import LoadResult, _parse_head, get_request, run_load


def test_an_answer_head_gives_its_status_and_length() -> None:
    head = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nContent-Length: 42\r\n\r\n"
    assert _parse_head(head) == (404, 42)


async def _serve_and_load() -> tuple[LoadResult, int]:
    served = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            served += 1
            if served % 50 == 0:  # now and then a connection dies mid-answer
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")
                writer.close()
                return
            status = b"200 OK" if b"/ok" in head else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    requests = [get_request("127.0.0.1", port, "/ok", "t"), get_request("127.0.0.1", port, "/no")]
    async with server:
        result = await run_load("127.0.0.1", port, requests, clients=3, seconds=0.5)
    return result, served


def test_every_answer_that_is_not_200_and_every_failure_is_counted() -> None:
    result, served = asyncio.run(_serve_and_load())
    assert result.ok > 0
    assert result.statuses.get(404, 0) > 0
    assert result.failures > 0
    assert result.failure_kinds.keys() == {"IncompleteReadError"}
    assert result.errors == result.requests - result.ok + result.failures
    assert result.requests + result.failures == served
