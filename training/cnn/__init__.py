"""Part 3's one-run engine: one CIFAR-10 configuration as one MLflow run."""
