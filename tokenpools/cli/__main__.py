"""`python -m tokenpools.cli`: the same CLI as the `tokenpools` console script (handy from a venv's python)."""

from tokenpools.cli import main

main()
