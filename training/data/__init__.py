"""Data sets: CIFAR-10 (on-device loader) and Part 1's synthetic 2D populations."""
