"""The shared Kafka layer, below the services (admitter, streams, scaler) and above the contracts.

- ``tokenpools.kafka.reader``: ``CompactedReader``, the one reader of compacted topics (every partition
  assigned, no consumer group; resume positions; a caught-up signal; reconnect with backoff; counters),
  and the one-shot ``read_compacted`` / ``read_records``;
- ``tokenpools.kafka.progress``: its pure bookkeeping (positions, caught-up, contact, backoff, topic
  metadata), tested without Kafka.

This package imports nothing itself, so importing one of its modules never pulls in another.
"""
