from services.featurizer.app import main

raise SystemExit(main())
