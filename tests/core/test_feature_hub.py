"""FeatureHub: fan-out to subscribers, drop-oldest back-pressure, request filtering and replay."""

from __future__ import annotations

import asyncio

from neuroscope.core.feature_hub import HISTORY_REQUESTS, FeatureHub


def run(coro):
    return asyncio.run(coro)


async def drain(sub) -> list[dict]:
    out = []
    while sub.pending():
        out.append(await sub.get())
    return out


def token(i: int, rid: str = "r1") -> dict:
    return {"request_id": rid, "index": i}


def test_every_subscriber_gets_every_event_in_order():
    async def main():
        hub = FeatureHub()
        subs = [hub.subscribe() for _ in range(3)]
        for i in range(50):
            hub.publish("token", token(i, f"r{i % 3}"))
        for sub in subs:
            events = await drain(sub)
            assert [e["data"]["index"] for e in events] == list(range(50))
            assert all(e["event"] == "token" for e in events)
            assert sub.delivered == 50 and sub.dropped == 0
        assert hub.published == 50 and hub.subscribers == 3

    run(main())


def test_a_full_queue_drops_the_oldest_and_publish_never_blocks():
    async def main():
        hub = FeatureHub(queue_size=4)
        slow, fast = hub.subscribe(), hub.subscribe()
        got_fast = []
        for i in range(10):
            hub.publish("token", token(i))  # synchronous: returns although nobody reads `slow`
            got_fast.append((await fast.get())["data"]["index"])
        assert got_fast == list(range(10))
        assert slow.pending() == 4
        assert slow.dropped == 6 and fast.dropped == 0
        assert hub.dropped == 6
        assert [e["data"]["index"] for e in await drain(slow)] == [6, 7, 8, 9]  # the newest survive

    run(main())


def test_publish_with_no_subscribers_is_fine():
    hub = FeatureHub()
    hub.publish("token", token(0))
    assert hub.published == 1 and hub.dropped == 0


def test_request_id_filtering():
    async def main():
        hub = FeatureHub()
        only_a, everything = hub.subscribe(request_id="a"), hub.subscribe()
        for i in range(6):
            hub.publish("token", token(i, "a" if i % 2 == 0 else "b"))
        hub.publish("stats", {"subscribers": 2})  # an event with no request id
        assert [e["data"]["index"] for e in await drain(only_a)] == [0, 2, 4]
        assert len(await drain(everything)) == 7

    run(main())


def test_prompt_events_only_reach_include_prompt_subscribers():
    async def main():
        hub = FeatureHub()
        plain, with_prompt = hub.subscribe(), hub.subscribe(include_prompt=True)
        hub.publish("prompt_token", token(0), prompt=True)
        hub.publish("token", token(1))
        assert [e["event"] for e in await drain(plain)] == ["token"]
        assert [e["event"] for e in await drain(with_prompt)] == ["prompt_token", "token"]

    run(main())


def test_prompt_subscribers_counter_goes_up_and_down():
    async def main():
        hub = FeatureHub()
        assert hub.prompt_subscribers == 0
        a = hub.subscribe(include_prompt=True)
        b = hub.subscribe(include_prompt=True, request_id="r1")
        c = hub.subscribe()
        assert hub.prompt_subscribers == 2
        hub.unsubscribe(c)
        assert hub.prompt_subscribers == 2
        hub.unsubscribe(a)
        assert hub.prompt_subscribers == 1
        hub.unsubscribe(a)  # twice: no double count
        assert hub.prompt_subscribers == 1
        hub.unsubscribe(b)
        assert hub.prompt_subscribers == 0 and hub.subscribers == 0

    run(main())


def test_unsubscribed_subscriber_gets_nothing_more():
    async def main():
        hub = FeatureHub()
        sub = hub.subscribe()
        hub.publish("token", token(0))
        hub.unsubscribe(sub)
        hub.publish("token", token(1))
        assert (await sub.get())["data"]["index"] == 0  # what was queued is still delivered
        assert await sub.get() is None

    run(main())


def test_late_subscriber_gets_the_request_history_from_the_start():
    async def main():
        hub = FeatureHub()
        hub.publish("prompt_token", token(-1, "r1"), prompt=True)
        for i in range(3):
            hub.publish("token", token(i, "r1"))
            hub.publish("token", token(100 + i, "r2"))
        late = hub.subscribe(request_id="r1")
        late_prompt = hub.subscribe(request_id="r1", include_prompt=True)
        hub.publish("token", token(3, "r1"))
        hub.publish("token", token(103, "r2"))
        hub.publish("generation_complete", {"request_id": "r1"})
        events = await drain(late)
        assert [e["data"].get("index") for e in events] == [0, 1, 2, 3, None]
        assert events[-1]["event"] == "generation_complete"
        assert [e["data"].get("index") for e in await drain(late_prompt)] == [-1, 0, 1, 2, 3, None]
        # a subscriber without a request id sees only what is published after it joined
        fresh = hub.subscribe()
        assert fresh.pending() == 0

    run(main())


def test_history_of_an_unknown_request_is_empty():
    async def main():
        hub = FeatureHub()
        hub.publish("token", token(0, "r1"))
        assert hub.subscribe(request_id="zzz").pending() == 0

    run(main())


def test_history_keeps_only_recent_requests():
    async def main():
        hub = FeatureHub()
        for r in range(HISTORY_REQUESTS + 5):
            hub.publish("token", token(0, f"r{r}"))
        assert hub.subscribe(request_id="r0").pending() == 0  # forgotten
        assert hub.subscribe(request_id=f"r{HISTORY_REQUESTS + 4}").pending() == 1

    run(main())


def test_close_ends_get_with_none():
    async def main():
        hub = FeatureHub()
        waiting, queued = hub.subscribe(), hub.subscribe(include_prompt=True)
        task = asyncio.create_task(waiting.get())
        await asyncio.sleep(0)
        assert not task.done()  # get() waits for an event
        hub.publish("token", token(0))
        assert (await asyncio.wait_for(task, 1))["data"]["index"] == 0
        hub.publish("token", token(1))
        task = asyncio.create_task(waiting.get())
        await asyncio.sleep(0)
        await asyncio.wait_for(task, 1)
        task = asyncio.create_task(waiting.get())
        await asyncio.sleep(0)
        hub.close()
        assert await asyncio.wait_for(task, 1) is None
        # events queued before close are still delivered, then None
        assert (await queued.get())["data"]["index"] == 0
        assert (await queued.get())["data"]["index"] == 1
        assert await queued.get() is None
        assert hub.subscribers == 0 and hub.prompt_subscribers == 0

    run(main())
