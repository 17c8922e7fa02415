"""`python -m sftmill.cli`."""

from sftmill.cli import main

main()
