"""The queues each execution runs on, as the relay checks a queue-scoped token (CONTRACT §9).

An execution's queues are fixed when it is submitted (its stored spec), so each answer is kept
(bounded) and a `*` stream asks once per execution, not once per event.
"""

from __future__ import annotations

from collections import OrderedDict

from api.store import Store
from events.scope import queues_of

# (known, queues): unknown executions are not remembered (they may exist a moment later).
Answer = tuple[bool, frozenset[str] | None]


class ExecutionQueues:
    def __init__(self, store: Store, default_queue: str, entries: int = 10_000) -> None:
        self._store = store
        self._default = default_queue
        self._entries = entries
        self._known: OrderedDict[str, frozenset[str] | None] = OrderedDict()

    async def of(self, execution_id: str) -> Answer:
        if execution_id in self._known:
            self._known.move_to_end(execution_id)
            return True, self._known[execution_id]
        source = await self._store.rerun_source(execution_id)
        if source is None:
            return False, None
        queues = queues_of(source.spec, self._default)
        self._known[execution_id] = queues
        while len(self._known) > self._entries:
            self._known.popitem(last=False)
        return True, queues
