"""The global loop service: one region's side of every GlobalEntitlement it is part of (issue 16).

One process per region (``tokenpools streams regional --region NAME``; replicas compute the same thing and
their writes are idempotent). For each GlobalEntitlement of the region's config topic that lists the
region it runs ``capacity.global_loop.RegionalLoop``: it reports the region's demand, usage and capacity
once per epoch on the region's own ``tokenpools.region-summaries``, observes its own and the peers'
reports (MirrorMaker 2 carries those as ``<peer>.tokenpools.region-summaries``), steps the loop and
writes the share it enforces as the regional Entitlement of the same name on the region's pool
(``schemas.regions.regional_entitlement``), so admitters, pipeline and scaler need nothing regional.

- ``streams.regional.rules``: the pure parts (a pool's capacity for a global entitlement, reports as
  records, the starting shares after a restart, the write decision, the status shown);
- ``streams.regional.metrics``: its Prometheus metrics;
- ``streams.regional.settings``: ``RegionalSettings`` (``TOKENPOOLS_REGIONAL_*``);
- ``streams.regional.service``: ``RegionalService`` (the Kafka I/O) and ``run_regional`` (the process).

No Faust: like ``streams.history`` it is a process of its own on ``tokenpools.kafka``.
"""
