"""`python -m crawler`: the same as the `crawler` console script."""

from crawler.cli import main

raise SystemExit(main())
