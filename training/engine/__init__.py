"""Training-step machinery beside the Trainer: optimizers and schedules, lookahead, CUDA graphs."""
