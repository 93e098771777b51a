"""The scaler's and the operator's Kubernetes side.

``scaler.kube.client`` builds the API client both use (in-cluster, else a kubeconfig);
``scaler.kube.actuator`` scales each pool's vLLM Deployment through its ``scale`` subresource.
"""
