"""The config topics' state: pools, entitlements and ready replicas, applied record by record.

``tokenpools.config`` holds manifests (``model_dump(mode="json", by_alias=True)`` of TokenPool and
Entitlement documents) keyed ``<Kind>/<name>`` (``schemas.topics.config_key``); a tombstone deletes.
``tokenpools.replicas`` holds the scaler's ``ReplicasReport`` per pool.

``ConfigView`` is pure state over those records (no Kafka): the pipeline (``streams.config_table``) and
the admitter (``admitter.kafka.config_sync``) both decode the config topic with it, so both count and
skip exactly the same bad records (``schemas.wire.BadRecords``, by topic and reason).
"""

from __future__ import annotations

import orjson

from schemas.echo import echo
from schemas.loader import ConfigError, PlatformConfig, parse_manifest
from schemas.records import ReplicasReport
from schemas.regions import GlobalEntitlement
from schemas.specs import Entitlement, Manifest, TokenPool
from schemas.topics import config_key
from schemas.wire import BadRecords, decode


class ConfigView:
    """The latest pools, entitlements and replica reports, applied record by record."""

    def __init__(self, bad: BadRecords, config_topic: str, replicas_topic: str) -> None:
        self.bad = bad
        self.config_topic = config_topic
        self.replicas_topic = replicas_topic
        self.docs: dict[str, Manifest] = {}
        self.replicas: dict[str, int] = {}
        self.version = 0
        self._platform: PlatformConfig | None = None

    # -- applying records ---------------------------------------------------------------------

    def apply_config(self, key: bytes | None, value: bytes | None) -> None:
        topic = self.config_topic
        if key is None:
            self.bad.note(topic, "no_key", "config records are keyed <Kind>/<name>")
            return
        skey = key.decode("utf-8", "replace")
        if value is None:
            if self.docs.pop(skey, None) is not None:
                self._changed()
            return
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            self.bad.note(topic, "not_json", f"{skey}: {exc}")
            return
        if not isinstance(doc, dict):
            self.bad.note(topic, "not_an_object", f"{skey}: {echo(doc)}")
            return
        try:
            manifest = parse_manifest(doc)
        except ConfigError as exc:
            self.bad.note(topic, "invalid", f"{skey}: {exc}".replace("\n", "; "))
            return
        if config_key(manifest) != skey:
            self.bad.note(topic, "key_mismatch", f"key {skey!r} holds {config_key(manifest)!r}")
            return
        self.docs[skey] = manifest
        self._changed()

    def apply_replicas(self, key: bytes | None, value: bytes | None) -> None:
        topic = self.replicas_topic
        if value is None:
            if key is not None and self.replicas.pop(key.decode("utf-8", "replace"), None) is not None:
                self._changed()
            return
        report = decode(ReplicasReport, value, topic, self.bad)
        if report is None:
            return
        if key is not None and key.decode("utf-8", "replace") != report.pool:
            self.bad.note(topic, "key_mismatch", f"key {key!r} holds pool {report.pool!r}")
            return
        self.replicas[report.pool] = report.ready_replicas
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._platform = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def platform(self) -> PlatformConfig:
        if self._platform is None:
            config = PlatformConfig()
            for doc in self.docs.values():
                if isinstance(doc, TokenPool):
                    config.pools[doc.name] = doc
                elif isinstance(doc, Entitlement):
                    config.entitlements[doc.name] = doc
                elif isinstance(doc, GlobalEntitlement):
                    config.global_entitlements[doc.name] = doc
            self._platform = config
        return self._platform

    def pool(self, name: str) -> TokenPool | None:
        return self.platform.pools.get(name)

    def entitlements_of(self, pool: str) -> list[Entitlement]:
        return sorted(self.platform.entitlements_of(pool), key=lambda e: e.name)

    def ready_replicas(self, pool: TokenPool) -> int:
        """The scaler's latest report, else the pool's initial (or minimum) replica count."""
        return self.replicas.get(pool.name, pool.spec.replicas.start)

    def token_weights(self, pool_name: str) -> tuple[float, float] | None:
        """The pool's (input, output) token weights; None for a pool the config does not hold."""
        pool = self.pool(pool_name)
        if pool is None:
            return None
        return (pool.spec.token_weights.input, pool.spec.token_weights.output)
