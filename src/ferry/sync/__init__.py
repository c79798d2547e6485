"""Keeping the target in step: what changed in the source (checksums or the WAL), and the loop
that follows it."""
