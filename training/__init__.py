"""Training: data sets, the Trainer family, experiment functions and MLflow tracking."""
