"""Evaluation: MeCoVQA and the held-out split of a datastore, scores and plots (`python -m medplib.evaluation`)."""
