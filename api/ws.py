"""The WebSocket stream: several subscriptions per socket, the same guarantees as SSE.

Client messages (JSON text):
    {"subscribe": "<executionId>", "after": N}   history after N, then live; ends after
                                                 execution_complete
    {"subscribe": "*"}                           every execution, live only
    {"unsubscribe": "<executionId>" or "*"}
Server messages: envelopes (the JSON text as published), and control messages that have no
"event" key: {"subscribed": id, "after": N}, {"unsubscribed": id},
{"error": "...", "field": "subscribe" | "after" | null, "target": id (when known)}.
A socket that takes nothing for `stall_limit_s`, or leaves more than `stream_buffer_bytes`
waiting (api/stream_guard.py), is closed with code 1013 and a reason naming the id to resume
after. A socket opened with a ticket subscribes only to what the ticket allows; every socket
closes with 1008 once the token it was opened with is no longer valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import redis
from starlette.exceptions import HTTPException
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.access import admit_for, check_scope
from api.auth import ALL, Grant
from api.feed import AllFeed, ExecutionFeed
from api.limits import limit_send_buffer, transport_of
from api.relay import Relay
from api.sse import observe_delivery
from api.stream_guard import Reason, StreamGuard

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class _SlowClient(Exception):
    def __init__(self, reason: Reason, target: str, last_sent: int) -> None:
        super().__init__(reason, target, last_sent)
        self.reason = reason
        self.target = target
        self.last_sent = last_sent


class _Revoked(Exception):
    """The token the socket was opened with is no longer valid."""


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
    def __init__(self, ws: WebSocket, relay: Relay, grant: Grant) -> None:
        self.ws = ws
        self.relay = relay
        self.grant = grant
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._feeds: dict[str, ExecutionFeed | AllFeed] = {}
        transport = transport_of(ws.scope)
        limit_send_buffer(transport, relay.settings.stream_socket_buffer_bytes)
        self._guard = StreamGuard(relay, transport, self._feeds.values)
        self._lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        # The send in progress (one at a time, under _lock): for what, after what.
        self._sending: tuple[str, int] = ("*", 0)

    async def run(self) -> None:
        self.relay.clients["ws"] += 1
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watch = tg.create_task(self._watch_stall())
                revoked = tg.create_task(self._watch_token())
                await self._receive_loop()
                for task in [watch, revoked, *self._subs.values()]:
                    task.cancel()
        except* _SlowClient as group:
            slow = group.exceptions[0]
            assert isinstance(slow, _SlowClient)
            await self._close_slow(slow)
        except* _Revoked:
            await self.relay.note_dropped("WebSocket", "token no longer valid", "revoked")
            await self._close(CLOSE_POLICY_VIOLATION, "the token of this stream is no longer valid")
        finally:
            self.relay.clients["ws"] -= 1

    async def _watch_stall(self) -> None:
        """Raises _SlowClient when the guard says the client is too slow."""
        reason = await self._guard.watch()
        raise _SlowClient(reason, *self._sending)

    async def _watch_token(self) -> None:
        settings = self.relay.settings
        await self.relay.auth.until_revoked(self.grant.token_id, settings.stream_auth_recheck_s)
        raise _Revoked

    async def _send(self, text: str, target: str, last_sent: int) -> None:
        """One message; the caller holds _lock. uvicorn's send waits while the socket's
        buffer is full, and the guard times that."""
        self._sending = (target, last_sent)
        with self._guard.sending(len(text)):
            await self.ws.send_text(text)

    async def _close_slow(self, slow: _SlowClient) -> None:
        await self.relay.note_dropped(
            "WebSocket", f"{slow.target} after id {slow.last_sent}", slow.reason
        )
        reason = f"too slow: resubscribe {slow.target[:48]} with after={slow.last_sent}"
        await self._close(CLOSE_TRY_AGAIN_LATER, reason)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, *_SEND_ERRORS):
            async with asyncio.timeout(1.0):
                await self.ws.close(code, reason)

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
        if not self.grant.allows(target):
            which = "every execution" if target == ALL else target
            message = f"this stream ticket is for {self.grant.scope}, not for {which}"
            raise _BadMessage(message, "subscribe", target)
        if target not in self._subs and len(self._subs) >= self.relay.options.max_ws_subscriptions:
            raise _BadMessage("too many subscriptions on this socket", "subscribe", target)
        feed: ExecutionFeed | AllFeed
        if target == "*":
            feed = self.relay.all_feed(admit_for(self.relay, self.grant.identity))
            after = 0
        else:
            try:
                state = await self.relay.store.stream_state(target)
            except (redis.RedisError, OSError) as e:
                unavailable = "the event store is unavailable; retry"
                raise _BadMessage(unavailable, "subscribe", target) from e
            if state is None:
                raise _BadMessage(f"unknown execution: {target}", "subscribe", target)
            try:
                await check_scope(self.relay, self.grant.identity, target)
            except HTTPException as e:
                raise _BadMessage(str(e.detail), "subscribe", target) from None
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
        self._feeds[target] = feed
        task.add_done_callback(lambda t: self._forget(target, t, feed))

    def _forget(self, target: str, task: asyncio.Task[None], feed: ExecutionFeed | AllFeed) -> None:
        if self._subs.get(target) is task:
            del self._subs[target]
        if self._feeds.get(target) is feed:
            del self._feeds[target]

    async def _pump(self, target: str, feed: ExecutionFeed | AllFeed) -> None:
        last_sent = feed.last_id
        try:
            async with contextlib.aclosing(feed.batches()) as batches:
                async for batch in batches:
                    if not batch:
                        continue
                    async with self._lock:
                        for ev in batch:
                            await self._send(ev.text, target, last_sent)
                            last_sent = ev.id
                    observe_delivery(self.relay.metrics, batch[0])
        except _SEND_ERRORS:
            return  # the socket is gone; the receive loop ends the session
        finally:
            feed.close()  # also when cancelled before the feed's generator started

    async def _send_json(self, obj: dict[str, Any]) -> None:
        async with self._lock:
            await self._send(json.dumps(obj), str(obj.get("subscribed", "*")), 0)
