"""Part 3's one-run engine: one CIFAR-10 configuration as one MLflow run.

recipe.py (what is trained: CifarRecipe, its checks and hash), options.py (where and how it runs),
session.py (data, model, trainer; fit and final test), store.py (skip/resume, params, metrics,
artifacts, results file), experiment.py (cnn_experiment, the programme's adapter, and run_recipe).
"""
