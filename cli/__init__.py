"""`cloudops`, the composition root: the only package that wires `events/`, `worker/` and
`api/` together (a worker, the relay and its reaper, embedded mode), plus the terminal side
(commands, sessions, rendering, the relay's HTTP client)."""
