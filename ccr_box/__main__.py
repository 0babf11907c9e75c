from ccr_box.cli import main

raise SystemExit(main())
