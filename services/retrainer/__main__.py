from services.retrainer.app import main

raise SystemExit(main())
