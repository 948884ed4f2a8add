"""Generate Python protobuf/gRPC code and .pyi stubs from proto/ into client/coalition/v1.

Usage: python scripts/generate_protos.py          # write the generated files
       python scripts/generate_protos.py --check  # exit 1 if the committed files are stale

The output depends only on proto/ and the pinned grpcio-tools and mypy-protobuf versions
(pyproject.toml), so a test can regenerate into a temporary directory and compare.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = ROOT / "client" / "coalition" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate(out_root: Path) -> Path:
    """Run protoc into out_root; return the directory holding coalition/v1 output."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # The mypy-protobuf plugins are console scripts next to this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out_root / "coalition" / "v1"


def _generated_files(directory: Path) -> set[str]:
    if not directory.exists():
        return set()
    return {p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def stale_files() -> list[str]:
    """Names of generated files that differ from, or are missing in, client/coalition/v1."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        fresh_names = _generated_files(fresh)
        current_names = _generated_files(OUT_PACKAGE)
        stale = sorted(fresh_names ^ current_names)
        for name in sorted(fresh_names & current_names):
            if not filecmp.cmp(fresh / name, OUT_PACKAGE / name, shallow=False):
                stale.append(name)
        return stale


def write() -> None:
    """Regenerate client/coalition/v1 from proto/."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for name in _generated_files(OUT_PACKAGE) - _generated_files(fresh):
            (OUT_PACKAGE / name).unlink()
        for name in _generated_files(fresh):
            shutil.copyfile(fresh / name, OUT_PACKAGE / name)
    init = OUT_PACKAGE / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC code for coalition.v1 (do not edit)."""\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    ns = parser.parse_args()
    if ns.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run `make generate`):", ", ".join(stale))
            return 1
        print("generated code is up to date")
        return 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
