from services.ground_truth_collector.app import main

raise SystemExit(main())
