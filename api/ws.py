"""The WebSocket stream: several subscriptions per socket, the same guarantees as SSE.

Client messages (JSON text):
    {"subscribe": "<executionId>", "after": N}   history after N, then live; ends after
                                                 execution_complete
    {"subscribe": "*"}                           every execution, live only
    {"unsubscribe": "<executionId>" or "*"}
Server messages: envelopes (the JSON text as published), and control messages that have no
"event" key: {"subscribed": id, "after": N}, {"unsubscribed": id},
{"error": "...", "field": "subscribe" | "after" | null, "target": id (when known)}.
A socket that takes nothing for `stall_limit_s` is closed with code 1013 and a reason naming
the id to resume after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import redis
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.feed import AllFeed, ExecutionFeed
from api.relay import Relay

CLOSE_TRY_AGAIN_LATER = 1013
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class _SlowClient(Exception):
    def __init__(self, target: str, last_sent: int) -> None:
        super().__init__(target, last_sent)
        self.target = target
        self.last_sent = last_sent


class _BadMessage(Exception):
    def __init__(self, message: str, field: str | None, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.target = target


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class WsSession:
    def __init__(self, ws: WebSocket, relay: Relay) -> None:
        self.ws = ws
        self.relay = relay
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        # The send in progress (one at a time, under _lock): since when, for what, after what.
        self._sending_since: float | None = None
        self._sending: tuple[str, int] = ("*", 0)

    async def run(self) -> None:
        self.relay.clients["ws"] += 1
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watch = tg.create_task(self._watch_stall())
                await self._receive_loop()
                for task in [watch, *self._subs.values()]:
                    task.cancel()
        except* _SlowClient as group:
            slow = group.exceptions[0]
            assert isinstance(slow, _SlowClient)
            await self._close_slow(slow)
        finally:
            self.relay.clients["ws"] -= 1

    async def _watch_stall(self) -> None:
        """Raises _SlowClient when one send has waited `stall_limit_s` (see sse.py)."""
        loop = asyncio.get_running_loop()
        stall_s = self.relay.options.stall_limit_s
        check_s = max(0.1, min(5.0, stall_s / 4))
        while True:
            await asyncio.sleep(check_s)
            since = self._sending_since
            if since is not None and loop.time() - since >= stall_s:
                raise _SlowClient(*self._sending)

    async def _send(self, text: str, target: str, last_sent: int) -> None:
        """One message; the caller holds _lock. uvicorn's send waits while the socket's
        buffer is full, and _watch_stall times that."""
        self._sending = (target, last_sent)
        self._sending_since = asyncio.get_running_loop().time()
        try:
            await self.ws.send_text(text)
        finally:
            self._sending_since = None

    async def _close_slow(self, slow: _SlowClient) -> None:
        await self.relay.note_dropped("WebSocket", f"{slow.target} after id {slow.last_sent}")
        reason = f"too slow: resubscribe {slow.target[:48]} with after={slow.last_sent}"
        with contextlib.suppress(TimeoutError, *_SEND_ERRORS):
            async with asyncio.timeout(1.0):
                await self.ws.close(CLOSE_TRY_AGAIN_LATER, reason)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                try:
                    if text is None:
                        raise _BadMessage("send JSON text messages", None)
                    await self._handle(text)
                except _BadMessage as e:
                    error: dict[str, Any] = {"error": e.message, "field": e.field}
                    if e.target is not None:
                        error["target"] = e.target
                    await self._send_json(error)
            except _SEND_ERRORS:
                return

    async def _handle(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError as e:
            raise _BadMessage("invalid JSON", None) from e
        if not isinstance(msg, dict):
            raise _BadMessage("a message must be a JSON object", None)
        if "subscribe" in msg:
            await self._subscribe(msg)
        elif "unsubscribe" in msg:
            target = msg["unsubscribe"]
            if not isinstance(target, str) or not _is_text(target):
                raise _BadMessage('must be an execution id or "*"', "unsubscribe")
            task = self._subs.pop(target, None)
            if task is not None:
                task.cancel()
            await self._send_json({"unsubscribed": target})
        else:
            raise _BadMessage('expected "subscribe" or "unsubscribe"', None)

    async def _subscribe(self, msg: dict[str, Any]) -> None:
        target = msg["subscribe"]
        if not isinstance(target, str) or not 0 < len(target) <= 200 or not _is_text(target):
            raise _BadMessage('must be an execution id or "*"', "subscribe")
        after = msg.get("after", 0)
        if after is None:
            after = 0
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise _BadMessage("must be a non-negative integer", "after", target)
        if target not in self._subs and len(self._subs) >= self.relay.options.max_ws_subscriptions:
            raise _BadMessage("too many subscriptions on this socket", "subscribe", target)
        feed: ExecutionFeed | AllFeed
        if target == "*":
            feed = self.relay.all_feed()
            after = 0
        else:
            try:
                state = await self.relay.store.stream_state(target)
            except (redis.RedisError, OSError) as e:
                unavailable = "the event store is unavailable; retry"
                raise _BadMessage(unavailable, "subscribe", target) from e
            if state is None:
                raise _BadMessage(f"unknown execution: {target}", "subscribe", target)
            feed = self.relay.execution_feed(target, after)
        old = self._subs.pop(target, None)
        if old is not None:
            old.cancel()
        # Registered with the hub before the ack: whatever is published after it reaches us.
        await feed.open()
        try:
            await self._send_json({"subscribed": target, "after": after})
        except BaseException:
            feed.close()
            raise
        assert self._tg is not None
        task = self._tg.create_task(self._pump(target, feed))
        self._subs[target] = task
        task.add_done_callback(lambda t: self._forget(target, t))

    def _forget(self, target: str, task: asyncio.Task[None]) -> None:
        if self._subs.get(target) is task:
            del self._subs[target]

    async def _pump(self, target: str, feed: ExecutionFeed | AllFeed) -> None:
        last_sent = feed.last_id
        try:
            async with contextlib.aclosing(feed.batches()) as batches:
                async for batch in batches:
                    if not batch:
                        continue
                    async with self._lock:
                        for ev in batch:
                            await self._send(ev.data, target, last_sent)
                            last_sent = ev.id
        except _SEND_ERRORS:
            return  # the socket is gone; the receive loop ends the session
        finally:
            feed.close()  # also when cancelled before the feed's generator started

    async def _send_json(self, obj: dict[str, Any]) -> None:
        async with self._lock:
            await self._send(json.dumps(obj), str(obj.get("subscribed", "*")), 0)
