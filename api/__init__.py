"""The relay: a thin HTTP, SSE and WebSocket bridge between Redis and every client.

It never runs a process and holds no state that Redis does not: submissions go through an
injected `worker.dispatch.Dispatcher`, reads go to Redis. Build it with `api.app.create_app`.
"""
