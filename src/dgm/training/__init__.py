"""One training loop for every family, and Ray Train around it."""
