"""bench/results.py: each benchmark run appended as data with its machine, the latest rendered."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import results  # noqa: E402


def test_runs_append_with_machine_and_latest_table_is_rendered(tmp_path):
    columns = ["engine", "tok/s", "probe GB/s", "note"]
    first = results.record("demo", columns, [{"engine": "a", "tok/s": 12.5, "probe GB/s": [20.1, 22.0]}],
                           settings={"threads": 2}, directory=tmp_path)
    results.record("demo", columns, [{"engine": "b", "tok/s": 3.25, "note": "x"}], variant="avx2",
                   directory=tmp_path)

    runs = results.runs("demo", tmp_path)
    assert [r["rows"][0]["engine"] for r in runs] == ["a", "b"]
    assert runs[0] == json.loads(json.dumps(first))
    machine = runs[0]["machine"]
    flags = set(Path("/proc/cpuinfo").read_text().split("\n\n")[0].split("flags")[1].split("\n")[0].split())
    assert set(machine["flags"]) == flags & set(results.FLAGS)
    assert machine["logical_cpus"] >= 1 and machine["cpu"]
    assert len(runs[0]["commit"]) >= 7 and runs[0]["date"].endswith("+00:00")

    plain = (tmp_path / "demo.md").read_text()
    assert "| a | 12.5 | 20.1 / 22 | — |" in plain and "threads 2" in plain
    assert "|---|---:|---|---|" in plain  # numbers right-aligned; lists and text left
    assert "| b | 3.25 | — | x |" in (tmp_path / "demo-avx2.md").read_text()


def test_recorded_runs_in_the_tree_are_readable_and_name_their_machine():
    for path in (ROOT / "bench" / "results").glob("*.jsonl"):
        for run in results.runs(path.stem):
            assert run["machine"]["cpu"] and run["date"] and run["commit"], path
            assert all(set(row) <= set(run["columns"]) for row in run["rows"]), path
