"""The shared Kafka layer, below the services (admitter, streams, scaler) and above the contracts.

- ``tokenpools.kafka.reader``: ``CompactedReader``, the one reader of compacted topics (every partition
  assigned, no consumer group; resume positions; a caught-up signal; reconnect with backoff; counters),
  and the one-shot ``read_compacted`` / ``read_records``;
- ``tokenpools.kafka.connection``: ``connection(kafka)``, the keyword arguments every aiokafka client is
  built with (bootstrap and security options, from ``KafkaSettings`` or a PLAINTEXT bootstrap string);
- ``tokenpools.kafka.settings``: ``KafkaSettings``, the Kafka block of every service's settings;
- ``tokenpools.kafka.progress``: its pure bookkeeping (positions, caught-up, contact, backoff, topic
  metadata), tested without Kafka.

This package imports nothing itself, so importing one of its modules never pulls in another.
"""
