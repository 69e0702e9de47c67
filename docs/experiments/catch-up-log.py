"""The learning-quality benchmark, with the retrainer's catch-up decisions printed (fifteenth session).

Runs benchmarks/learning_quality.py with the same arguments and prints each catch-up log line of
the retrainer (a start and its replay; a concept drift during catch-up, and whether the learner's
own errors rose significantly since its last replay) as ``LOG ...``, in order, among its output:

    .venv/bin/python docs/experiments/catch-up-log.py --streams sea --seeds 1,2,3,4 --no-plots | grep ^LOG
"""

import logging
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]


class CatchUpLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "catch-up" in record.getMessage()


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(CatchUpLines())
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    retrainer = logging.getLogger("services.retrainer")
    retrainer.setLevel(logging.INFO)
    retrainer.addHandler(handler)
    retrainer.propagate = False
    sys.argv = [str(ROOT / "benchmarks" / "learning_quality.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
