"""The house rules a newcomer relies on: docs that exist, public library APIs only, one
console entry point with one error policy."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("cpikan", "tracking", "studies", "reports", "lab", "bench", "tests")
           for p in (ROOT / d).rglob("*.py")] + [ROOT / "reports" / "kpis.toml", ROOT / "README.md"]


def test_every_referenced_doc_exists():
    refs = set()
    for path in SOURCES:
        refs |= {m for m in re.findall(r"\b(docs/[\w-]+\.md|[A-Z]+\.md)\b", path.read_text())}
    assert "docs/architecture.md" in refs and "docs/domain.md" in refs
    missing = [r for r in refs if not (ROOT / r).exists()]
    assert not missing, missing


def test_no_private_attribute_of_optuna_or_mlflow():
    pattern = re.compile(r"\._storage\b|\._trial_id\b")
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if p.name != "test_house.py" and pattern.search(p.read_text())]
    assert not offenders, offenders


def test_core_knows_nothing_of_the_layers_above():
    bad = re.compile(r"^\s*(from|import)\s+(tracking|studies|reports|lab|mlflow|optuna)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "cpikan").rglob("*.py") if bad.search(p.read_text())]
    assert not offenders, offenders
    up = re.compile(r"^\s*(from|import)\s+(studies|reports|lab)\b", re.M)
    assert not [p for p in (ROOT / "tracking").rglob("*.py") if up.search(p.read_text())]


def _lab(*args):
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_console_entry_point_dispatches_with_one_error_policy(capsys):
    out = _lab("study", "--list")
    assert out.returncode == 0 and "tiling_overlap_sweep" in out.stdout
    for args, message in [(("nonsense",), "error: unknown command 'nonsense'; allowed: study, reconstruct, check-model"),
                          (("place-sensors", "nowhere.npy", "--k", "4", "--out", "x"), "nowhere.npy: no such file or folder"),
                          (("check-model", "nowhere.py:build", "--channels", "16"), "error: factory: nowhere.py: no such"),
                          (("study", "helmholtz1d", "--set", "train.amp=fp8"), "error: train.amp: unknown 'fp8'"),
                          (("study", "helmholtz1d", "--set", "model.dtype=float16"), "allowed: float32, float64"),
                          # argparse's own mistakes too (they were its usage block and a line of its own)
                          (("reconstruct", "w", "--out", "o", "--pixel-pitch", "3.45um"),
                           "error: argument --pixel-pitch: invalid float value: '3.45um' (the options: python -m "
                           "studies.reconstruct --help)"),
                          (("replay",), "error: the following arguments are required: run_id")]:
        out = _lab(*args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert message in out.stderr, out.stderr
    from studies.run import main  # every command, also those without the entry point's own policy

    with pytest.raises(SystemExit) as stopped:
        main(["helmholtz1d", "--trials", "many"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: argument --trials: invalid int value: 'many'"), err
    assert len(err.strip().splitlines()) == 1
