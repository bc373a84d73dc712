"""History in a database (CONTRACT §8): every execution's record and events, kept after Redis
forgot them, searchable, pruned by retention.

| module | job |
|---|---|
| `engine.py` | make_engine: the one place engines are made; dialect locks and upserts |
| `schema.py` | the tables (SQLAlchemy Core) |
| `migrate.py`, `migrations/` | Alembic: upgrade, check_schema, the self-upgrading SQLite file |
| `batches.py` | packing envelopes into event_batches rows and back |
| `rows.py` | record hash -> executions row and hosts |
| `snapshot.py` | reading an execution's record and new events out of Redis, one snapshot |
| `archive.py` | the archiver: Redis -> database, exactly once |
| `query.py` | History: get_record, read_events, search |
| `retention.py` | prune |
| `search.py` | the list's filters and pages: the database's merged with live Redis records |
| `service.py` | the archiver and the daily prune beside a relay |

Knows SQLAlchemy, Redis (read only, key layout of events.keys) and events.records; nothing of
Celery, HTTP or the worker.
"""
