"""Content-addressed objects: IDs, encodings, chunking, compression and pack files (pure, L1),
and the local object store built on them (L2). Import the submodules directly."""
