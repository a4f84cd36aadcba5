"""An API client: in-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or
~/.kube/config), as kubectl does."""
from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
                                  client_configuration=cfg)
    return client.ApiClient(configuration=cfg)
