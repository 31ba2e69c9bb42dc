"""Regenerates fallow_client/_proto/ from proto/proto/fallow.proto (the one schema).

    python clients/python/generate.py            # rewrite the generated files
    python clients/python/generate.py --check    # exit 1 if they differ from the proto

The generated code is committed, so `pip install clients/python` needs neither grpcio-tools
nor the repository's proto directory; tests/test_proto.py fails when it drifts from the
proto. The proto is mapped to the virtual path `fallow_client/_proto/fallow.proto`, so the
generated gRPC module imports its messages as `fallow_client._proto.fallow_pb2` (protoc's
default would be a top-level `import fallow_pb2`, which breaks inside a package).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto" / "proto"
PACKAGE_DIR = "fallow_client/_proto"
GENERATED = ("fallow_pb2.py", "fallow_pb2.pyi", "fallow_pb2_grpc.py")


def generate(out: pathlib.Path) -> None:
    """Runs protoc (from grpcio-tools) on fallow.proto, writing under `out`."""
    from grpc_tools import protoc  # only needed here, not at run time

    if not (PROTO_DIR / "fallow.proto").is_file():
        raise SystemExit(f"generate.py: {PROTO_DIR / 'fallow.proto'} is missing")
    args = [
        "protoc",
        f"-I{PACKAGE_DIR}={PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"{PACKAGE_DIR}/fallow.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("generate.py: protoc failed on fallow.proto")


def differences() -> list[str]:
    """The generated files that differ from what fallow.proto generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        return [
            name
            for name in GENERATED
            if (pathlib.Path(tmp) / PACKAGE_DIR / name).read_bytes()
            != (HERE / PACKAGE_DIR / name).read_bytes()
        ]


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        stale = differences()
        if stale:
            print(
                f"generate.py: {', '.join(stale)} differ from proto/proto/fallow.proto: "
                "run `python clients/python/generate.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    generate(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
