"""Entry point: ``python -m bench.run [--quick|--full] [--scenarios a,b,c,d] [--out DIR]``.

Also works as ``python bench/run.py`` (the repository root is then put on ``sys.path``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    if not __package__:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main  # noqa: PLC0415 (after the sys.path fix above)

    return main()


if __name__ == "__main__":
    sys.exit(_main())
