"""Volumes, their planes and the training / evaluation conversations built from a MONAI Label datastore."""

from medplib.data import vocabulary as _vocabulary  # noqa: E402,F401  (registers the vocabulary's Chinese names)
