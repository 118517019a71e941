"""Model library: the Part 1 MLP and classifiers, the Part 2 CNN family."""
