from ohem.cli import main

raise SystemExit(main())
