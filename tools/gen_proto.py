"""Generate the Python wire modules from lib/proto into a package directory.

protoc emits ``import InternalProtocol_pb2`` (a top-level import) for the
cross-file dependency; we rewrite it to a package-relative import so the
generated modules live inside ``external_server.wire`` without touching
``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "lib" / "proto"
DEFAULT_OUT = ROOT / "server" / "external_server" / "wire"
PROTO_FILES = ("InternalProtocol.proto", "ExternalProtocol.proto")
_TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` and return the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for produced in sorted(Path(tmp).iterdir()):
            text = _TOP_LEVEL_IMPORT.sub(r"from . import \1 as \2", produced.read_text())
            target = out_dir / produced.name
            target.write_text(text)
            written.append(target)
        return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in generate(args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
