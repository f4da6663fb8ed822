"""`python -m billing` runs the command line."""

from billing.cli import main

if __name__ == "__main__":
    main()
