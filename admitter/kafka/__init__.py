"""The admitter's Kafka parts: request events out (a spooled sink), limits in (the state follower),
config both ways (the config sync), replica membership in (discovery), and the wiring from settings
(``parts``). Within the admitter, only this package talks to aiokafka.
"""
