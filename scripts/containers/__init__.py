"""Build and run the container images for real: `make images`, `make smoke-images` and the
container part of `make test` (see docs/deploy.md, "Building and checking the images")."""
