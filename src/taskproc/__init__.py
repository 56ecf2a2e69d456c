"""taskproc: a Kubernetes-native task processing service."""

__version__ = "0.1.0"
