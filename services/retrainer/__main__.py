# The first line before the imports: on a busy machine they take seconds (libs/streamloop/startup.py).
from streamloop.startup import first_line

startup = first_line("retrainer")

from services.retrainer.app import main  # noqa: E402 - after the line above, on purpose

raise SystemExit(main(startup))
