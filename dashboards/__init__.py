"""Grafana dashboards as code, the alert-free half of what on-call staff and analysts look at.

``dashboards.spec`` describes each dashboard once; ``dashboards.grafana`` turns that into Grafana JSON
with the grafana-foundation-sdk builders (committed under ``dashboards/json/``), ``dashboards.macros``
expands the ClickHouse plugin's macros so the same SQL runs in tests and in ``tokenpools report``, and
``dashboards.report`` renders the ClickHouse panels to PNG and one HTML page. This package reads no store
and no Kafka of its own: whoever runs a query hands it a function that runs SQL.
"""
