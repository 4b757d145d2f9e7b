from hyft.cli import main

raise SystemExit(main())
