"""imagebuilder: build, publish and retire Kubernetes node images."""

__version__ = "0.1.0"
