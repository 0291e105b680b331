"""Executors: local processes, a Ray cluster, Kubernetes manifests."""
