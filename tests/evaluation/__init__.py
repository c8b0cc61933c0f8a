"""Calibration, evaluation reports and shifted photos."""
