from pithcrawl.cli import main

raise SystemExit(main())
