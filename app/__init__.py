"""The top layer: the `galaxyvit` command line and the demo. It may import every other package of the project."""
