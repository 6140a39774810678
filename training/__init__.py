"""Models, run registry, data and training for the study's three model families."""
