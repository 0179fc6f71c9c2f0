"""The committed generated code is exactly what protoc makes from protos/."""

from pathlib import Path

from grpc_tools import protoc

from tests.conftest import REPO_ROOT


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    protos = sorted((REPO_ROOT / "protos").rglob("*.proto"))
    assert protos
    args = [
        "protoc",
        f"-I{REPO_ROOT / 'protos'}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        *map(str, protos),
    ]
    assert protoc.main(args) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    committed = REPO_ROOT / "fedxai" / "v1"
    for relative in generated:
        assert (REPO_ROOT / relative).read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run `make protos` and commit the result"
        )
    stale = {p.name for p in committed.glob("*_pb2*")} - {p.name for p in generated}
    assert not stale, f"generated files without a .proto: {stale}"
