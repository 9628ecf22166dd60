from parent_side.cli import main

raise SystemExit(main())
