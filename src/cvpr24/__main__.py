from cvpr24.cli import main

raise SystemExit(main())
