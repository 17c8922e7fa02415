"""sftmill: turn raw domain texts into supervised fine-tuning data.

`sftmill.run(recipe, **overrides)` and `sftmill.load(run_dir)` are the Python
API (`sftmill.api`).  They are looked up on first use: every module of the
package imports this one first, and the API sits above all of them."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("run", "load", "RunData"):
        from sftmill import api

        return getattr(api, name)
    raise AttributeError(f"module 'sftmill' has no attribute {name!r}")
