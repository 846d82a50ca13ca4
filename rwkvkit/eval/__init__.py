"""Evaluation: the scorer, the task readers, the tasks and their table, and the lm-eval adapter."""
