"""Prefect flows: each reads like the recipe, a list of stage calls."""
