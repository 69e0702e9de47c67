from services.drift_detector.app import main

raise SystemExit(main())
