"""Grids: expanding configs into configurations, parallel workers, submitting a grid."""
