"""Kubernetes operator reconciling ExternalServer resources into company servers."""

__version__ = "0.1.0"
