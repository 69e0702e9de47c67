from services.model_publisher.app import main

raise SystemExit(main())
