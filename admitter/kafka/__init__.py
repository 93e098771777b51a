"""The admitter's Kafka parts: request events out (a spooled sink), limits in (the state follower),
config both ways (the config sync), replica membership in (discovery), and the wiring from settings.

Nothing outside this package imports aiokafka; an admitter without Kafka never imports it.
"""
