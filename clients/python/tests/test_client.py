"""The Python client against a real `herald serve` process."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any, Awaitable, Callable, List

import pytest

from gateway import Gateway
from herald import Event, HeraldClient, HeraldError
from proxy import CuttingProxy

SECRET = "python-client-secret-0123456789"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.stop()


def http_publish(base: str, events: List[dict]) -> List[int]:
    req = urllib.request.Request(base + "/v1/publish", data=json.dumps(events).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["ids"]


async def collect(sub, n: int, timeout: float = 30) -> List[Event]:
    out: List[Event] = []
    while len(out) < n:
        out.append(await sub.next(timeout))
    return out


def test_subscribe_filters_replay_publish_and_live(gateway: Gateway) -> None:
    async def main() -> None:
        async with HeraldClient(gateway.base) as client:
            ids = [await client.publish("py", f"orders.{region}", {"n": i, "region": region}) for i, region in enumerate(["eu", "us", "eu"])]
            assert ids == [1, 2, 3]
            sub = await client.subscribe(
                [{"exchange": "py", "pattern": "orders.*"}],
                filters=[["payload/region", "=", "eu"]],
                since={"id": 0},
            )
            replayed = await collect(sub, 2)
            assert [e.id for e in replayed] == [1, 3]
            assert replayed[0].payload == {"n": 0, "region": "eu"} and replayed[0].routing_key == "orders.eu"
            live_id = await client.publish("py", "orders.eu", {"n": 9, "region": "eu"}, headers={"h": "1"})
            await client.publish("py", "orders.us", {"n": 10, "region": "us"})
            live = await sub.next(10)
            assert (live.id, live.headers) == (live_id, {"h": "1"})
            with pytest.raises(asyncio.TimeoutError):
                await sub.next(0.3)  # the `us` one is filtered out
            last = await client.subscribe([{"exchange": "py", "pattern": "#"}], since={"last": 2})
            assert [e.id for e in await collect(last, 2)] == [4, 5]
            with pytest.raises(HeraldError) as bad:
                await client.subscribe([{"exchange": "py"}])  # no pattern
            assert bad.value.code == "bad_request"
            await sub.unsubscribe()
            assert [e async for e in sub] == []

    run(main())


def test_every_event_once_and_in_order_while_the_connection_is_cut(gateway: Gateway) -> None:
    total = 2000

    async def main() -> None:
        proxy = CuttingProxy(gateway.base)
        base = await proxy.start()
        client = HeraldClient(base, initial_delay=0.02, max_delay=0.2)
        await client.connect()
        iterated = await client.subscribe([{"exchange": "flaky", "pattern": "#"}])
        called: List[int] = []
        await client.subscribe([{"exchange": "flaky", "pattern": "k.*"}], on_event=lambda e: called.append(e.id))

        async def publish_all() -> None:
            loop = asyncio.get_running_loop()
            for start in range(0, total, 100):
                batch = [{"exchange": "flaky", "routing_key": "k.x", "payload": start + i} for i in range(100)]
                await loop.run_in_executor(None, http_publish, gateway.base, batch)
                await asyncio.sleep(0.1)  # events flow for about two seconds

        async def cut_repeatedly() -> None:
            while not done.is_set():
                await asyncio.sleep(0.12)
                proxy.cut()

        done = asyncio.Event()
        cutter = asyncio.ensure_future(cut_repeatedly())
        publisher = asyncio.ensure_future(publish_all())
        seen: List[int] = []
        async for event in iterated:
            seen.append(event.id)
            if len(seen) == total:
                break
        await publisher
        done.set()
        await cutter
        for _ in range(200):
            if len(called) >= total:
                break
            await asyncio.sleep(0.05)
        assert seen == list(range(1, total + 1)), "each event once, in order (iterated)"
        assert called == list(range(1, total + 1)), "each event once, in order (callback)"
        assert proxy.cuts >= 8 and client.reconnects >= 5, (proxy.cuts, client.reconnects)
        await client.close()
        await proxy.stop()

    run(main())


def test_manual_acks_decide_what_a_resume_repeats(gateway: Gateway) -> None:
    async def main() -> None:
        proxy = CuttingProxy(gateway.base)
        base = await proxy.start()
        client = HeraldClient(base, auto_ack=False, ack_interval=0.05, initial_delay=0.02, max_delay=0.1)
        await client.connect()
        sub = await client.subscribe([{"exchange": "acks", "pattern": "#"}])
        http_publish(gateway.base, [{"exchange": "acks", "routing_key": "r", "payload": i} for i in range(5)])
        got = await collect(sub, 5)
        sub.ack(got[2].id)
        await asyncio.sleep(0.3)  # the ack is flushed
        session = dict(client.session or {})
        proxy.cut()
        # The resumed session repeats 4 and 5 (not acknowledged); the client drops them.
        for _ in range(100):
            if client.duplicates_dropped >= 2:
                break
            await asyncio.sleep(0.05)
        assert client.duplicates_dropped == 2, client.duplicates_dropped
        assert client.session == session, "the same session was resumed"
        http_publish(gateway.base, [{"exchange": "acks", "routing_key": "r", "payload": 5}])
        assert (await sub.next(10)).id == 6
        await client.close()
        await proxy.stop()

    run(main())


def test_an_expired_session_restarts_after_the_last_event_seen() -> None:
    g = Gateway('[session]\nttl = "1s"\nack_flush = "100ms"\n')

    async def main() -> None:
        proxy = CuttingProxy(g.base)
        base = await proxy.start()
        client = HeraldClient(base, initial_delay=0.05, max_delay=0.2)
        await client.connect()
        sub = await client.subscribe([{"exchange": "ttl", "pattern": "#"}])
        http_publish(g.base, [{"exchange": "ttl", "routing_key": "r", "payload": i} for i in range(3)])
        assert [e.id for e in await collect(sub, 3)] == [1, 2, 3]
        first_session = (client.session or {}).get("id")
        proxy.refusing = True
        proxy.cut()
        http_publish(g.base, [{"exchange": "ttl", "routing_key": "r", "payload": i} for i in range(3, 6)])
        await asyncio.sleep(2.0)  # longer than session.ttl: the session is gone
        proxy.refusing = False
        assert [e.id for e in await collect(sub, 3)] == [4, 5, 6]
        assert (client.session or {}).get("id") != first_session, "a new session"
        with pytest.raises(asyncio.TimeoutError):
            await sub.next(0.3)
        await client.close()
        await proxy.stop()

    try:
        run(main())
    finally:
        g.stop()


def test_pause_and_resume(gateway: Gateway) -> None:
    async def main() -> None:
        async with HeraldClient(gateway.base) as client:
            sub = await client.subscribe([{"exchange": "p", "pattern": "#"}])
            await sub.pause()
            http_publish(gateway.base, [{"exchange": "p", "routing_key": "r", "payload": i} for i in range(3)])
            with pytest.raises(asyncio.TimeoutError):
                await sub.next(0.4)
            await sub.resume()
            assert [e.id for e in await collect(sub, 3)] == [1, 2, 3]

    run(main())


def test_rendezvous_request_and_serve(gateway: Gateway) -> None:
    async def main() -> None:
        async with HeraldClient(gateway.base) as responder_side, HeraldClient(gateway.base) as requester:
            async def handler(body: Any, info: dict) -> Any:
                await asyncio.sleep(0.01)
                return {"echo": body, "service": info["service"]}

            responder = await responder_side.serve("py-echo", handler, concurrency=4)
            answers = await asyncio.gather(*(requester.request("py-echo", {"n": i}, timeout=5) for i in range(8)))
            assert answers == [{"echo": {"n": i}, "service": "py-echo"} for i in range(8)]
            await responder.stop()
            with pytest.raises(HeraldError) as none:
                await requester.request("py-echo", 1, timeout=1)
            assert none.value.code == "unavailable"

    run(main())


def test_tokens_refused_for_good_and_a_token_callback_per_connection() -> None:
    g = Gateway(f'[auth]\njwt_secret = "{SECRET}"\n')

    async def main() -> None:
        bad = HeraldClient(g.base, token="not-a-token", initial_delay=0.01)
        with pytest.raises(HeraldError) as refused:
            await bad.connect()
        assert refused.value.close_code == 4401 and bad.state == "closed"
        assert bad.reconnects == 0, "4401 is not retried"

        proxy = CuttingProxy(g.base)
        base = await proxy.start()
        good = g.token(SECRET, "py", "--subscribe", "tok=#", "--publish", "tok=#")
        calls: List[int] = []

        async def token() -> str:
            calls.append(1)
            return good

        client = HeraldClient(base, token=token, initial_delay=0.02, max_delay=0.1)
        await client.connect()
        sub = await client.subscribe([{"exchange": "tok", "pattern": "#"}])
        with pytest.raises(HeraldError) as forbidden:
            await client.publish("other", "r", 1)
        assert forbidden.value.code == "forbidden"
        proxy.refusing = True
        proxy.cut()
        while client.state == "open":  # until the client notices
            await asyncio.sleep(0.01)
        publish = asyncio.ensure_future(client.publish("tok", "r", 1))
        await asyncio.sleep(0.2)
        assert not publish.done(), "waits for a connection"
        proxy.refusing = False
        assert await publish == 1, "sent once reconnected"
        assert (await sub.next(10)).id == 1
        assert len(calls) >= 2, "the callback is asked again for the new connection"
        await client.close()
        await proxy.stop()

    try:
        run(main())
    finally:
        g.stop()
