"""A client's inbox and a channel's route (api/inbox.py): an overflowed inbox is parked, gets
no more events, still counts how far behind it is, and gets events again once reset."""

from __future__ import annotations

from api.inbox import ClientQueue, Route
from events.wire import RawEvent


def event(n: int, size: int = 100) -> RawEvent:
    return RawEvent(n, "execution_output", b"x" * size)


def test_an_overflowed_inbox_is_parked_and_still_counts_what_it_let_go() -> None:
    route = Route()
    slow, fast = ClientQueue(max_bytes=250), ClientQueue(max_bytes=10_000)
    route.live |= {slow, fast}
    for n in (1, 2):
        route.put(event(n))
    assert slow.behind_bytes == 200 and not slow.overflowed
    route.put(event(3))  # past 250 bytes: overflows, its queue let go
    assert slow.overflowed and slow.needs_history and slow.take() == []
    assert route.parked == {slow} and route.live == {fast} and len(route) == 2
    assert slow.behind_bytes == 300
    for n in range(4, 11):
        route.put(event(n))
    assert slow.behind_bytes == 1000  # what the channel routed since, never put into it
    assert [ev.id for ev in fast.take()] == list(range(1, 11))

    slow.reset()  # before its history read: back on the route
    assert route.live == {slow, fast} and not route.parked and slow.behind_bytes == 0
    route.put(event(11))
    assert [ev.id for ev in slow.take()] == [11] and slow.behind_bytes == 0


def test_a_parked_inbox_leaves_its_route() -> None:
    route = Route()
    q = ClientQueue(max_bytes=50)
    route.live.add(q)
    route.put(event(1))
    route.put(event(2))
    assert route.parked == {q}
    route.discard(q)
    assert not route and q.behind_bytes == 200
    q.reset()  # a reset after it left does not bring it back
    assert not route and q.behind_bytes == 0


def test_an_inbox_without_a_route_counts_by_itself() -> None:
    q = ClientQueue(max_bytes=50)
    assert q.put(event(1)) is False
    assert q.put(event(2)) is True
    assert q.put(event(3)) is False and q.behind_bytes == 300
