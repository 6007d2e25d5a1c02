"""The Remote contract against file://, memory://, S3 (moto) and GCS (fake-gcs-server)."""

from .contract import RemoteContract


class TestRemoteContract(RemoteContract):
    """Runs every contract test once per backend of the ``remote`` fixture."""
