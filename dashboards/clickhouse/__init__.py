"""Dashboards on the history in ClickHouse (data source ``grafana-clickhouse-datasource``)."""
