from services.online_scorer.app import main

raise SystemExit(main())
