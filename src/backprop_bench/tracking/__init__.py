"""MLflow: the only package that imports it (lazily, inside functions)."""
