"""`relscope study` end to end on a tiny random model: every stage writes its outputs and stage.json, the report
has every figure and table (no gaps), a rerun skips every stage, a changed key or --force redoes that stage and
the stages downstream of it (setting the old outputs aside), and bad configs fail naming the key."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tiny import tiny_study_yaml

from relscope.cli import main
from relscope.errors import ConfigError
from relscope.reports.render import find_chromium, render
from relscope.study.config import load_study_config
from relscope.study.stages import STAGE_NAMES



def _statuses(out: Path) -> dict[str, str]:
    return {name: s["status"] for name, s in json.loads((out / "manifest.json").read_text())["stages"].items()}


def test_the_study_runs_every_stage_and_reports_everything(study):
    config, out = study
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(STAGE_NAMES)
    for name, stage in manifest["stages"].items():
        assert stage["status"] == "ran" and stage["seconds"] >= 0 and stage["peak_rss_mib"] > 0
        assert json.loads((out / name / "stage.json").read_text())["key"] == stage["key"]
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "Not produced" not in html and "Not produced" not in md
    assert html.count("<img ") >= 15 and html.count("data:image/png;base64,") == html.count("<img ")
    assert 'src="http' not in html and "<script" not in html  # self-contained
    for caption in ("Zero-shot baseline", "LoRA anatomy", "Activation patching", "Knockout: top-IE vs random",
                    "source study", "budget 10 min: kept", "atp-nearest attribution estimate against exact patching",
                    "faithfulness of the top-edge circuits"):
        assert caption in html
    for figure in md.split("](")[1:]:  # every figure the markdown links exists beside it
        assert (out / figure.split(")")[0]).is_file()
    # Step 0 of the checkpoint table (and its figure) is the zero-shot stage's judge, measured once.
    zero_shot = json.loads((out / "zero-shot" / "metrics.json").read_text())["reranked"]
    steps = list(csv.DictReader((out / "checkpoints" / "checkpoints.csv").open()))
    assert [int(r["step"]) for r in steps] == [0, 1, 2]
    assert float(steps[0]["nDCG@10"]) == pytest.approx(zero_shot["nDCG@10"], abs=1e-4)


def test_a_rerun_skips_every_complete_stage(study, capsys):
    config, out = study
    before = (out / "heads" / "knockout" / "knockout.csv").stat().st_mtime_ns
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0
    assert f"report: {out}/report.html" in capsys.readouterr().out
    assert set(_statuses(out).values()) == {"skipped"}
    assert (out / "heads" / "knockout" / "knockout.csv").stat().st_mtime_ns == before


def test_a_changed_key_redoes_that_stage_and_sets_the_old_one_aside(study):
    config, out = study
    values = yaml.safe_load(config.read_text())
    values["mechanisms"]["knockout_size"] = 1
    config.write_text(yaml.safe_dump(values))
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0
    statuses = _statuses(out)
    assert [n for n, s in statuses.items() if s == "ran"] == ["patching", "heads", "report"]
    assert len(list(out.glob("heads.old-*"))) == 1 and len(list(out.glob("patching.old-*"))) == 1
    assert "Random-" in (out / "heads" / "knockout" / "knockout.md").read_text()


def test_force_redoes_one_stage_and_its_readers(study):
    config, out = study
    assert main(["study", str(config), "--out", str(out), "--force", "checkpoints", "--quiet"]) == 0
    assert [n for n, s in _statuses(out).items() if s == "ran"] == ["checkpoints", "report"]
    with pytest.raises(SystemExit):  # argparse lists the stages
        main(["study", str(config), "--out", str(out), "--force", "nope"])


def test_an_interrupted_stage_is_resumed_not_skipped(study):
    config, out = study
    (out / "ablations" / "stage.json").unlink()  # as if killed before it finished
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0
    assert [n for n, s in _statuses(out).items() if s == "ran"] == ["ablations", "report"]


def test_bad_study_configs_name_the_key(tmp_path, tiny_model_dir, trec_dir, tiny_groups):
    path = tiny_study_yaml(tmp_path / "s.yaml", tiny_model_dir, trec_dir, tiny_groups)
    values = yaml.safe_load(path.read_text())
    for change, message in ((lambda v: v["mechanisms"].update(max_pairz=3), "unknown key 'max_pairz'"),
                            (lambda v: v.pop("train"), "key 'train' must be a mapping"),
                            (lambda v: v["train"].update(model="other"), "train.model 'other' differs"),
                            (lambda v: v["mechanisms"].update(max_pairs=0), "max_pairs must be a positive")):
        broken = json.loads(json.dumps(values))
        change(broken)
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError, match=message):
            load_study_config(path)


@pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium package (make install installs it)")
def test_the_report_renders_in_headless_chromium_without_broken_images(study, tmp_path):
    _, out = study
    result = render(out / "report.html", tmp_path / "shot.png")
    assert result.ok and result.images >= 15 and result.screenshot.stat().st_size > 10_000
    broken = tmp_path / "broken.html"  # the check can fail: one image's data corrupted
    broken.write_text((out / "report.html").read_text().replace("base64,iVBOR", "base64,XXXX", 1))
    assert render(broken, tmp_path / "broken.png").broken == 1


def test_the_shipped_study_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    cpu, gpu = load_study_config(root / "study-cpu.yaml"), load_study_config(root / "study-gpu.yaml")
    assert cpu.model == cpu.train.model == "smollm2-135m-instruct" and cpu.budget_minutes == 45
    assert gpu.train.objective == "listwise" and gpu.train.template == "yes_no"
