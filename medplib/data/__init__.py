"""Volumes, their planes and the training / evaluation conversations built from a MONAI Label datastore."""
