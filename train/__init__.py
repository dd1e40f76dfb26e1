"""Losses, samplers, the training loop, evaluation, calibration and export."""
