"""The REST API: the only writer of the store; the CLI and the dashboard are its clients."""

from suanli.api.app import create_app

__all__ = ["create_app"]
