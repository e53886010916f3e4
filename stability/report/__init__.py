"""The study report: per-run numbers of a stored run (summary.py) and the study's figures (study_plots.py)."""
