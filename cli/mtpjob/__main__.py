from mtpjob.cli import main

raise SystemExit(main())
