"""Generate the scorer's gRPC Python code from schemas/proto into libs/streamloop/contracts/generated.

    python -m services.online_scorer.generate_proto          # rewrite the checked-in files
    python -m services.online_scorer.generate_proto --check  # exit 1 if they differ from a fresh run

protoc names Python modules after the proto's path (``streamloop/scoring/v1``), which would
collide with the ``streamloop`` package itself; the generated files are therefore placed under
``streamloop.contracts.generated.scoring.v1`` and their one cross-module import is rewritten to
match. The descriptors keep the proto's real file name, so reflection clients see
``streamloop/scoring/v1/scoring.proto``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "schemas" / "proto"
OUTPUT_ROOT = REPO_ROOT / "libs" / "streamloop" / "contracts" / "generated"
PROTOS = ("streamloop/scoring/v1/scoring.proto",)
PROTO_PACKAGE = "streamloop."
PYTHON_PACKAGE = "streamloop.contracts.generated."

_GENERATED_DOC = '"""Generated from schemas/proto by services/online_scorer/generate_proto.py; do not edit."""\n'
_PACKAGE_DOCS = {
    Path("__init__.py"): _GENERATED_DOC,
    Path("scoring/__init__.py"): "",
    Path("scoring/v1/__init__.py"): "",
}


def generate() -> dict[Path, str]:
    """Every generated file, by path relative to OUTPUT_ROOT, as a fresh protoc run writes it."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    files: dict[Path, str] = dict(_PACKAGE_DOCS)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTOS)}")
        for path in sorted(Path(tmp).rglob("*.py*")):
            relative = path.relative_to(tmp)
            target = Path(*relative.parts[1:])  # drop the leading "streamloop/"
            text = path.read_text()
            files[target] = text.replace(f"from {PROTO_PACKAGE}", f"from {PYTHON_PACKAGE}")
    return files


def differences(files: dict[Path, str], root: Path = OUTPUT_ROOT) -> list[Path]:
    """Generated files missing from ``root`` or different there."""
    changed = []
    for relative, text in files.items():
        path = root / relative
        if not path.exists() or path.read_text() != text:
            changed.append(relative)
    return changed


def write(files: dict[Path, str], root: Path = OUTPUT_ROOT) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    check = parser.parse_args(argv).check
    files = generate()
    changed = differences(files)
    if check:
        for relative in changed:
            print(f"out of date: {OUTPUT_ROOT / relative}")
        return 1 if changed else 0
    write(files)
    print(f"wrote {len(files)} files under {OUTPUT_ROOT} ({len(changed)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
