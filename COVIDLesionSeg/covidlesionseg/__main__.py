from covidlesionseg.cli import main

raise SystemExit(main())
