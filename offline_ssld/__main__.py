"""`python -m offline_ssld ...`: the same command line as `offline-ssld ...`."""

from offline_ssld.cli import main

if __name__ == "__main__":
    main()
