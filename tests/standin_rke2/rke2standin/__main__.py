from rke2standin.cli import main

raise SystemExit(main())
