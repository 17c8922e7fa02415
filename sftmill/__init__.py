"""sftmill: turn raw domain texts into supervised fine-tuning data."""

__version__ = "0.1.0"
