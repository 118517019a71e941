"""Part 1: the first classifier and the MLP depth x width grid as MLflow runs."""
