"""One way to reach the API server, for the scaler and the operator.

``api_client()`` returns a ``kubernetes.client.ApiClient`` of its own (never the library's global
default configuration, so two clients with different identities can live in one process, as the
tests' do):

1. an explicit ``kubeconfig`` path wins;
2. else, inside a pod (``KUBERNETES_SERVICE_HOST`` set and the ServiceAccount token mounted), the
   in-cluster config;
3. else the kubeconfig at ``$KUBECONFIG`` (``:``-separated files are merged, as kubectl does) or
   ``~/.kube/config``.

When none works, ``KubeConfigError`` says every source tried and why each failed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import SERVICE_HOST_ENV_NAME, SERVICE_TOKEN_FILENAME

DEFAULT_KUBECONFIG = Path("~/.kube/config")


class KubeConfigError(RuntimeError):
    """No usable API server configuration; the message names each source tried."""


def in_cluster() -> bool:
    """Whether this process runs in a pod with a ServiceAccount token mounted."""
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and Path(SERVICE_TOKEN_FILENAME).is_file()


def default_kubeconfig() -> str:
    # Read at call time: the library reads $KUBECONFIG once at import, before a test or a CLI option sets it.
    return os.environ.get("KUBECONFIG") or str(DEFAULT_KUBECONFIG.expanduser())


def api_client(kubeconfig: Path | None = None, *, context: str | None = None) -> client.ApiClient:
    """An API client from ``kubeconfig``, else the in-cluster config, else $KUBECONFIG / ~/.kube/config."""
    tried: list[str] = []
    if kubeconfig is None and in_cluster():
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except ConfigException as exc:
            tried.append(f"in-cluster config ({SERVICE_HOST_ENV_NAME}, {SERVICE_TOKEN_FILENAME}): {exc}")
    elif kubeconfig is None:
        tried.append(f"in-cluster config: not in a pod ({SERVICE_HOST_ENV_NAME} unset or no {SERVICE_TOKEN_FILENAME})")
    path = str(kubeconfig.expanduser()) if kubeconfig is not None else default_kubeconfig()
    where = "--kubeconfig" if kubeconfig is not None else ("$KUBECONFIG" if os.environ.get("KUBECONFIG") else "default")
    configuration = client.Configuration()
    try:
        # persist_config=False: never write refreshed credentials back into the user's file.
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                persist_config=False)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    except (ConfigException, OSError, ValueError) as exc:
        ctx = f", context {context!r}" if context else ""
        tried.append(f"kubeconfig {path} ({where}{ctx}): {exc}")
    raise KubeConfigError("no Kubernetes API server configuration found; tried:\n  " + "\n  ".join(tried))


def default_namespace(kubeconfig: Path | None = None, *, context: str | None = None) -> str:
    """The namespace to work in when none is given: the pod's own, else the kubeconfig context's, else ``default``."""
    if kubeconfig is None and in_cluster():
        own = Path(SERVICE_TOKEN_FILENAME).with_name("namespace")
        with contextlib.suppress(OSError):
            if name := own.read_text().strip():
                return name
    path = str(kubeconfig.expanduser()) if kubeconfig is not None else default_kubeconfig()
    with contextlib.suppress(ConfigException, OSError, ValueError, KeyError, TypeError):
        contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        if isinstance(namespace, str) and namespace:
            return namespace
    return "default"
