"""``python -m cesard.ctl``: the same as ``cesarctl``."""

from cesard.ctl import main

raise SystemExit(main())
