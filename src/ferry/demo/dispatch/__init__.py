"""The dispatch world of DOMAIN.md, shipped as SQL scripts (package data)."""
