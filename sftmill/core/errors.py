"""The fatal errors of the bottom layer: a bad recipe or config stops before work starts,
reported as one line."""

from __future__ import annotations


class RecipeError(Exception):
    """A fatal problem with the recipe: reported as one line, nothing runs."""


class UndeclaredRecipeRead(RuntimeError):
    """A stage read a recipe section it did not declare (a programming error: its cache key
    would not follow that section)."""
