"""`python -m imagebuilder.cli` (the Makefile, the tests and the workflows run the CLI so)."""

from imagebuilder.cli import main

if __name__ == "__main__":
    main()
