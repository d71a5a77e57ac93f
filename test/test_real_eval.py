"""``dualdepth real-eval``: one table of a model beside a constant depth on every drive of a data folder."""

import json
import shutil

import pytest
from small_model import write_small_checkpoint

from dualdepth_ros import cli
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.evaluation.drives import find_drives


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_bag):
    """Two drives: the sample drive with depth and poses, and a copy whose depth topic is not named /gt/depth."""
    root = tmp_path_factory.mktemp("drives")
    shutil.copytree(sample_bag, root / "synthetic" / "bag")
    (root / "not_a_drive").mkdir()
    (root / "not_a_drive" / "notes.txt").write_text("no bag here")
    return root


def test_table_scores_the_model_beside_a_constant(tmp_path, data_dir, capsys) -> None:
    model = write_small_checkpoint(tmp_path, tmp_path / "cache")
    out = tmp_path / "real.json"
    table = tmp_path / "real.md"
    code = cli.main(
        ["real-eval", "--model", str(model), "--data", str(data_dir), "--json", str(out), "--table", str(table)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| synthetic | " in printed and "not_a_drive" not in printed
    result = json.loads(out.read_text())["drives"]["synthetic"]
    m, c = result["model"], result["constant"]
    # Both runs scored the same frames with depth ground truth, by the same protocol.
    assert m["scored"] == c["scored"] == m["frames"] > 0
    assert m["protocol"] == c["protocol"] == "dense"
    assert 0 < m["abs_rel"] < 5 and 0 < c["abs_rel"] < 5 and m["abs_rel"] != c["abs_rel"]
    assert m["ate"] is not None and m["ate"] >= 0 and c["ate"] is None
    # The table prints what the JSON holds, and the Markdown file is the printed table.
    assert f"{m['abs_rel']:.3f}" in printed and f"{c['abs_rel']:.3f}" in printed
    assert table.read_text().strip() in printed


def test_without_drives_it_says_how_to_make_one(tmp_path) -> None:
    with pytest.raises(DualDepthError, match="kitti-to-bag"):
        find_drives(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert cli.main(["real-eval", "--model", __file__, "--data", str(tmp_path / "empty")]) == 2


def test_an_unknown_drive_is_named(data_dir) -> None:
    with pytest.raises(DualDepthError, match="no drive 'kitti_raw_0009'.*synthetic"):
        find_drives(data_dir, ["kitti_raw_0009"])


def test_curve_scores_every_snapshot_of_a_run(tmp_path, data_dir, capsys) -> None:
    model = write_small_checkpoint(tmp_path, tmp_path / "cache")
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    shutil.copy(model, run / "snapshots" / "step_000020.pt")
    shutil.copy(model, run / "snapshots" / "step_000010.pt")
    out = tmp_path / "real.json"
    assert (
        cli.main(["real-eval", "--model", str(model), "--data", str(data_dir), "--json", str(out), "--curve", str(run)])
        == 0
    )
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    curve = payload["curve"]["drives"]["synthetic"]
    assert [p["step"] for p in curve] == [10, 20]
    # Each snapshot is the scored model itself here, so the curve repeats the table's figures.
    m = payload["drives"]["synthetic"]["model"]
    for p in curve:
        assert p["abs_rel"] == pytest.approx(m["abs_rel"], rel=1e-6) and p["a1"] == pytest.approx(m["a1"], rel=1e-6)
        assert p["scored"] == m["scored"]
    assert "| 10 | " in printed and "| 20 | " in printed


def test_curve_without_snapshots_fails_before_scoring(tmp_path, data_dir, capsys) -> None:
    (tmp_path / "run").mkdir()
    assert cli.main(["real-eval", "--model", __file__, "--data", str(data_dir), "--curve", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no snapshots in" in err and "snapshot_every" in err
    assert "scoring" not in err
