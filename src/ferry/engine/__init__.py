"""The pipeline: stage the sources, plan each model's query, run its chunks, settle what
depends on what changed."""
