"""Synthetic sagittal cervical-spine phantoms."""
