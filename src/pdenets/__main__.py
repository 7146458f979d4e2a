from pdenets.cli import main

raise SystemExit(main())
