from pithcrawl.cli import main

# Guarded: worker processes (`crawl.workers`) import the main module under another name.
if __name__ == "__main__":
    raise SystemExit(main())
