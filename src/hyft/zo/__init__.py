"""Zeroth-order core: directions, exact perturbation, update, estimator. Imports torch only."""
