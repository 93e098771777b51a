"""History: the request events and state versions kept in ClickHouse, for analysts and tenants.

One process (``tokenpools history serve``) owns the store: it runs the exactly-once sink from Kafka
(``sink``), serves read-only queries over HTTP (``server``) and exports its metrics. The store is
embedded chDB by default (one process per data directory) or a ClickHouse server by URL (``store``).
The schema is numbered migrations (``schemas/clickhouse``, applied by ``migrate``); the questions
analysts ask are named SQL files (``questions``), the same ones ``docs/analytics.md`` shows.
"""
