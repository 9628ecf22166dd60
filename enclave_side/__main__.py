from enclave_side.cli import main

raise SystemExit(main())
