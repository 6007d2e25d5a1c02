"""Remotes move bytes by key (file://, memory://, s3://, gs://, any fsspec URL). Coming with the
remotes issue."""
