"""Demo worlds that ferry builds, migrates and checks itself against."""
