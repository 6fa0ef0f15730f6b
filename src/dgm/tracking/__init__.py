"""MLflow: runs, artifacts, the pyfunc generator and the model registry (only here)."""
