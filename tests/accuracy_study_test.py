"""The CIFAR-10 study's bookkeeping (benchmarks/accuracy.py): kept files, gap recovered, epochs."""

from __future__ import annotations

import json

import pytest
from absl import flags
from absl.testing import flagsaver

from apprentice_tf import precision, reporting
from benchmarks.accuracy import (
    C_VARIANTS,
    CARRIED_OVER_FILE,
    FLOAT_GROUP_FILES,
    HAKD_GRID,
    _plan,
    epochs_to_95,
    gap_recovered,
    hakd_choice,
    keep_artifacts,
    pack_resume,
    print_report,
    record_provenance,
    resume_archive,
    row_file_name,
    scheme_a_rows,
    started_first,
    summarise_rows,
    unpack_resume,
)
from benchmarks.plots import accuracy_plots
from recipes import hakd


def test_row_file_name_is_the_row_in_lower_case_with_underscores():
    assert row_file_name("ternary W2A8 + KD scheme B") == "ternary_w2a8_kd_scheme_b.tflite"
    assert row_file_name("teacher resnet56 (float)") == "teacher_resnet56_float.tflite"


def test_keep_artifacts_copies_files_and_makes_paths_relative(tmp_path):
    work, artifacts, json_dir = (
        tmp_path / "work",
        tmp_path / "results" / "study",
        tmp_path / "results",
    )
    (work / "float").mkdir(parents=True)
    for name in FLOAT_GROUP_FILES:
        (work / "float" / name).write_text(name)
    (work / "float" / "float.tflite").write_bytes(b"tflite")
    rows = [{"row": "float resnet20", "tflite": str(work / "float" / "float.tflite")}]

    keep_artifacts("float", rows, work, artifacts, json_dir)

    assert rows[0]["tflite"] == "study/float/float_resnet20.tflite"
    assert (json_dir / rows[0]["tflite"]).read_bytes() == b"tflite"
    for name in FLOAT_GROUP_FILES:
        assert (artifacts / "float" / name).read_text() == name

    # A later sitting on a machine without the work directory: the kept files stand.
    for path in (work / "float").iterdir():
        path.unlink()
    keep_artifacts("float", rows, work, artifacts, json_dir)
    assert rows[0]["tflite"] == "study/float/float_resnet20.tflite"


def test_keep_artifacts_names_the_row_whose_file_is_gone(tmp_path):
    rows = [{"row": "ternary W2A8 alone", "tflite": str(tmp_path / "gone.tflite")}]
    with pytest.raises(FileNotFoundError, match="ternary W2A8 alone.*B_seed0"):
        keep_artifacts("B_seed0", rows, tmp_path / "work", tmp_path / "kept", tmp_path)


def test_plan_runs_every_row_the_issue_asks_for_before_the_second_teacher_restart(tmp_path):
    # The study's default --seeds=0,1,2, set explicitly: tests that call a recipe's
    # define_flags() redefine --seeds (allow_override) with its default, and tests parse flags.
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["accuracy", "--seeds=0,1,2"])
        names = [name for name, _ in _plan(tmp_path)]
    assert names[:4] == ["float", "teacher", "teacher_restart", "C"]
    assert names.index("B_seed2") < names.index("B_tau4_seed2") < names.index("B_4bit")
    assert names[-9:] == [
        "B_4bit",
        "progressive",
        "progressive_authors",
        "progressive_B",
        "A",
        "HAKD",
        "HAKD_alone",
        "teacher_restart2",
        "C_teacher_restart2",
    ]
    assert names.index("C_tau4_seed2") < names.index("C_lr3") < names.index("C_epochs15")
    assert names.index("C_epochs15") < names.index("B_seed0")
    assert len(names) == len(set(names))


def test_latency_plot_waits_for_the_side_by_side_timing(tmp_path):
    rows = [
        {"row": "ternary W2A8 alone", "curve": [0.5, 0.8], "packed_bytes": 78112},
        {"row": "ternary W2A8 + KD scheme B", "curve": [0.6, 0.85], "packed_bytes": 78112},
        {"row": "HAKD student (τ=4): resnet_d14_w1.0", "curve": [0.7], "packed_bytes": 705000},
    ]
    for row, (top1, ms) in zip(rows, [(0.85, 0.28), (0.86, 0.27), (0.88, 0.64)], strict=True):
        row.update(tflite_top1=top1, latency_ms=ms)
    payload = {"groups": {"B_seed0": rows[:2], "HAKD": rows[2:]}}
    names = {path.name for path in accuracy_plots(payload, tmp_path)}
    assert names == {"accuracy_vs_size.png", "ternary_curves.png"}  # HAKD's own timings only
    payload["latency_note"] = "every row's file timed side by side"
    written = accuracy_plots(payload, tmp_path)
    assert {path.name for path in written} == names | {"accuracy_vs_latency.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_begun_groups_run_first_the_rest_in_plan_order(tmp_path):
    work, artifacts = tmp_path / "work", tmp_path / "artifacts"
    (work / "HAKD").mkdir(parents=True)  # begun in this work directory
    archive = resume_archive(artifacts, "A")  # begun in an earlier sitting, carried over
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    names = ["C_epochs15", "A", "HAKD", "teacher_restart2", "C_teacher_restart2"]
    assert started_first(names, work, artifacts) == [
        "A",
        "HAKD",
        "C_epochs15",
        "teacher_restart2",
        "C_teacher_restart2",
    ]
    assert started_first(names[::-1], tmp_path / "none", artifacts)[0] == "A"
    assert started_first([], work, artifacts) == []


def test_the_stronger_teacher_variant_differs_from_c_at_tau4_in_the_teacher_only():
    _, stronger = C_VARIANTS["teacher_restart2"]
    _, tau4 = C_VARIANTS["tau4"]
    assert stronger["teacher"] == "teacher_restart2"
    assert {k: v for k, v in stronger.items() if k != "teacher"} == tau4


def test_hakd_alone_trains_the_candidate_hakd_chose():
    rows = [
        {"row": "HAKD (KD+AT) (τ=4): resnet_d14_w1.0", "model": "resnet_d14_w1.0"},
        {"row": "magnitude pruning 79%: resnet56_w1", "model": "resnet56_w1"},
    ]
    choice = hakd_choice(rows)
    assert choice.name == "resnet_d14_w1.0"
    assert (choice.kwargs["depth"], choice.kwargs["width_multiplier"]) == (14, 1.0)
    with pytest.raises(ValueError, match="run group HAKD first"):
        hakd_choice(rows[1:])
    with pytest.raises(ValueError, match="no student of HAKD_GRID"):
        hakd_choice([{"row": "HAKD (KD+AT): resnet_d110_w1.0", "model": "resnet_d110_w1.0"}])


def test_the_hakd_grid_is_one_the_recipe_accepts(tmp_path):
    checked = hakd.validate(
        hakd.HAKDConfig(family="resnet", grid=json.dumps(HAKD_GRID), output_dir=str(tmp_path))
    )
    assert len(checked.grid) == 15
    assert {"depth": 20, "width_multiplier": 1.0} in checked.grid  # the float student's shape


def test_epochs_to_95_is_the_first_epoch_within_95_percent_of_the_last():
    assert epochs_to_95([0.5, 0.8, 0.86, 0.9]) == 3  # 0.95 * 0.9 = 0.855
    assert epochs_to_95([]) is None


def test_gap_recovered_pairs_each_distilled_row_with_its_seeds_baseline():
    rows = [
        {"row": "float resnet20", "seed": 0, "tflite_top1": 0.90},
        {"row": "ternary W2A8 alone", "seed": 0, "tflite_top1": 0.80},
        {"row": "ternary W2A8 + KD scheme B", "seed": 0, "tflite_top1": 0.85},
        {"row": "ternary W2A8 alone", "seed": 1, "tflite_top1": 0.82},
        {"row": "ternary W2A8 + KD scheme B", "seed": 1, "tflite_top1": 0.86},
        {"row": "ternary W2A8 fine-tuned alone (C baseline)", "seed": 0, "tflite_top1": 0.86},
        {"row": "ternary W2A8 + KD scheme C", "seed": 0, "tflite_top1": 0.85},
        {"row": "ternary W2A8 fine-tuned alone (C baseline)", "seed": 1, "tflite_top1": 0.85},
        {"row": "ternary W2A8 + KD scheme C", "seed": 1, "tflite_top1": 0.87},
        {"row": "ternary W2A8 + KD scheme C (τ=2)", "seed": 0, "tflite_top1": 0.88},
        {"row": "ternary W2A8 + KD scheme C (τ=4)", "seed": 2, "tflite_top1": 0.88},  # no baseline
        {"row": "ternary W2A8 + KD scheme B (τ=4)", "seed": 0, "tflite_top1": 0.81},
        {"row": "ternary W2A8 + KD scheme B (τ=4)", "seed": 1, "tflite_top1": 0.88},
        {"row": "W4A8 alone", "seed": 0, "tflite_top1": 0.86},
        {"row": "W4A8 + KD scheme B (τ=4)", "seed": 0, "tflite_top1": 0.89},
        {"row": "ternary W2A8 + KD scheme A (τ=4)", "seed": 0, "tflite_top1": 0.83},
        {"row": "ternary W2A8 fine-tuned alone (C baseline, lr ×3)", "seed": 0, "tflite_top1": 0.8},
        {"row": "ternary W2A8 + KD scheme C (τ=4, lr ×3)", "seed": 0, "tflite_top1": 0.86},
    ]
    by_scheme = {gain["scheme"]: gain for gain in gap_recovered(rows, "resnet20")}

    assert by_scheme["B"]["per_seed"] == pytest.approx([0.5, 0.5])
    assert by_scheme["B"]["recovered"]["mean"] == pytest.approx(0.5)
    assert by_scheme["B"]["gain_points"]["mean"] == pytest.approx(4.5)
    assert by_scheme["B"]["gain_points"]["n"] == 2
    # C pairs each seed with its own baseline: -0.25 (seed 0) and 0.4 (seed 1).
    assert by_scheme["C"]["per_seed"] == pytest.approx([-0.25, 0.4])
    assert by_scheme["C"]["gain_points"]["mean"] == pytest.approx(0.5)
    # A variant is paired with C's baseline of its seed; one without a baseline is left out.
    assert by_scheme["C (τ=2)"]["recovered"]["mean"] == pytest.approx(0.5)
    assert by_scheme["C (τ=2)"]["gain_points"]["n"] == 1
    assert "C (τ=4)" not in by_scheme
    # A variant that changes the fine-tuning has its own baseline: (0.86 − 0.80) / (0.90 − 0.80).
    assert by_scheme["C (τ=4, lr ×3)"]["per_seed"] == pytest.approx([0.6])
    # A B variant is paired with the ternary baseline of its seed: 0.1 (seed 0), 0.75 (seed 1).
    assert by_scheme["B (τ=4)"]["per_seed"] == pytest.approx([0.1, 0.75])
    assert by_scheme["B (τ=4)"]["gain_points"]["mean"] == pytest.approx(3.5)
    # 4-bit: its own baseline and gap, (0.89 − 0.86) / (0.90 − 0.86).
    assert by_scheme["B W4A8 (τ=4)"]["per_seed"] == pytest.approx([0.75])
    # A has no baseline of its own: the mean ternary baseline 0.81, (0.83 − 0.81) / 0.09.
    assert by_scheme["A (τ=4)"]["recovered"]["mean"] == pytest.approx(2 / 9)
    assert gap_recovered(rows[1:], "resnet20") == []  # no float row: nothing to measure against


def test_an_unfinished_group_moves_to_another_machine_through_its_resume_archive(tmp_path):
    work, artifacts = tmp_path / "work", tmp_path / "kept"
    group = work / "B_seed0"
    (group / "backup" / "distill" / "chief").mkdir(parents=True)
    (group / "baseline.weights.h5").write_bytes(b"finished stage")
    (group / "baseline.csv").write_text("epoch,accuracy\n0,0.5\n")
    (group / "backup" / "distill" / "chief" / "checkpoint").write_text("epoch 3")
    (group / "teacher.keras").write_bytes(b"saved again from --teacher_checkpoint")
    (group / "student_baseline.tflite").write_bytes(b"made again")

    assert pack_resume("B_seed0", work, artifacts) == resume_archive(artifacts, "B_seed0")
    assert pack_resume("C", work, artifacts) is None  # never started: nothing to pack

    elsewhere = tmp_path / "new_machine"
    assert unpack_resume("B_seed0", elsewhere, artifacts)
    unpacked = sorted(
        str(p.relative_to(elsewhere)) for p in (elsewhere / "B_seed0").rglob("*") if p.is_file()
    )
    assert unpacked == [
        "B_seed0/backup/distill/chief/checkpoint",
        "B_seed0/baseline.csv",
        "B_seed0/baseline.weights.h5",
        f"B_seed0/{CARRIED_OVER_FILE}",
    ]
    # A work directory that already holds the group is newer than any archive: left alone.
    (elsewhere / "B_seed0" / "baseline.csv").write_text("newer")
    assert not unpack_resume("B_seed0", elsewhere, artifacts)
    assert (elsewhere / "B_seed0" / "baseline.csv").read_text() == "newer"


def test_a_carried_over_group_says_which_epochs_ran_on_which_machine(tmp_path):
    work, artifacts, elsewhere = tmp_path / "work", tmp_path / "kept", tmp_path / "new_machine"
    (work / "B_seed0").mkdir(parents=True)
    (work / "B_seed0" / "distill.csv").write_text("epoch,accuracy\n0,0.5\n1,0.6\n\n")
    pack_resume("B_seed0", work, artifacts)
    pack_resume("B_seed0", work, artifacts)  # packed again in the same sitting: recorded once
    unpack_resume("B_seed0", elsewhere, artifacts)
    with open(elsewhere / "B_seed0" / "distill.csv", "a") as log:
        log.write("2,0.7\n")
    pack_resume("B_seed0", elsewhere, artifacts)  # a second sitting carries it on
    sittings = json.loads((elsewhere / "B_seed0" / CARRIED_OVER_FILE).read_text())
    machine = reporting.machine_info()
    assert [s["epochs_logged"] for s in sittings] == [{"distill.csv": 2}, {"distill.csv": 3}]
    assert {s["cpu_family_model"] for s in sittings} == {machine["cpu_family_model"]}
    assert {s["float_policy"] for s in sittings} <= set(precision.POLICIES)

    (elsewhere / "B_seed0" / "results.json").write_text(
        json.dumps({"machine": machine, "training_policy": "float32"})
    )
    rows = [{"row": "alone"}, {"row": "distilled"}]
    record_provenance("B_seed0", rows, elsewhere, artifacts)
    assert [row["carried_over"] for row in rows] == [sittings, sittings]


def test_provenance_comes_from_the_recipes_results_and_is_recorded_once(tmp_path):
    work, kept = tmp_path / "work", tmp_path / "kept"
    (kept / "teacher").mkdir(parents=True)
    (work / "B_seed0").mkdir(parents=True)
    (work / "HAKD").mkdir(parents=True)
    zen3 = {"cpu": "AMD EPYC", "cpu_family_model": "25/1", "date": "2026-12-01"}
    zen4 = {"cpu": "AMD EPYC", "cpu_family_model": "25/17", "date": "2026-12-02"}
    (kept / "teacher" / "results.json").write_text(
        json.dumps({"machine": zen3, "training_policy": "float32"})
    )
    (work / "B_seed0" / "results.json").write_text(
        json.dumps({"machine": zen4, "training_policy": "mixed_bfloat16"})
    )
    (work / "HAKD" / "results.json").write_text(json.dumps({"machine": zen4}))

    teacher, distilled, hakd = [{"row": "t"}], [{"row": "d"}], [{"row": "h"}]
    record_provenance("teacher", teacher, work, kept)
    record_provenance("B_seed0", distilled, work, kept)
    record_provenance("HAKD", hakd, work, kept)
    assert teacher[0]["machine"] == {"cpu_family_model": "25/1", "date": "2026-12-01"}
    assert teacher[0]["float_policy"] == "float32"
    assert distilled[0]["float_policy"] == "mixed_bfloat16"
    assert hakd[0]["float_policy"] == "float32"  # recipes.hakd trains in float32

    (work / "B_seed0" / "results.json").write_text(
        json.dumps({"machine": zen3, "training_policy": "float32"})
    )
    record_provenance("B_seed0", distilled, work, kept)  # a later sitting: kept as recorded
    assert distilled[0]["machine"]["cpu_family_model"] == "25/17"


def test_summary_pools_each_rows_seeds_in_order_of_first_appearance():
    def run(name, seed, top1, seconds, epochs):
        return {
            "row": name,
            "seed": seed,
            "keras_top1": top1,
            "tflite_top1": top1,
            "agreement": {"top1_agreement": 0.99 + seed / 1000},
            "packed_bytes": 78112,
            "epochs_to_95": epochs,
            "seconds_per_epoch": seconds,
        }

    rows = [
        run("float resnet20", 0, 0.87, 250.0, 10),
        run("ternary W2A8 alone", 0, 0.85, 180.0, 10),
        run("ternary W2A8 alone", 1, 0.86, 120.0, 9),
        run("ternary W2A8 alone", 2, 0.87, 130.0, 10),
    ]
    summary = summarise_rows(rows)
    assert [line["row"] for line in summary] == ["float resnet20", "ternary W2A8 alone"]
    alone = summary[1]
    assert alone["seed"] == "0, 1, 2"
    assert alone["tflite_top1"] == "0.8600 ± 0.0100"  # mean, sample standard deviation
    assert alone["agreement_top1"] == pytest.approx(0.99)
    assert alone["epochs_to_95"] == "10, 9, 10"
    assert alone["seconds_per_epoch"] == 130.0  # median
    assert alone["latency_ms"] is None  # not timed yet
    assert summary[0]["tflite_top1"] == "0.8700"  # one seed: no spread


def test_report_prints_every_row_and_the_gain_computed_from_the_rows(capsys):
    def row(name, top1, seed=0):
        return {
            "row": name,
            "seed": seed,
            "tflite_top1": top1,
            "keras_top1": top1,
            "agreement": {"top1_agreement": 1.0},
        }

    table = {
        "budget": {"student": "resnet20"},
        "groups": {
            "float": [row("float resnet20", 0.90)],
            "B_seed0": [row("ternary W2A8 alone", 0.80), row("ternary W2A8 + KD scheme B", 0.86)],
        },
        "gap_recovered": [],  # stale: the report computes it again
    }
    print_report(table)
    printed = capsys.readouterr().out
    assert "| ternary W2A8 + KD scheme B | 0 | 0.8600 | 0.8600 |" in printed
    assert "| ternary W2A8 + KD scheme B | 0 | 0.8600 | 0.8600 | 1.0000 |" in printed  # pooled
    assert "scheme B: gap recovered 0.600, gain 6.000 points" in printed
    assert printed.index("| float resnet20 |") < printed.index("| ternary W2A8 alone |")

    print_report(table, group_order=["B_seed0"])  # the plan's order first, then the others
    printed = capsys.readouterr().out
    assert printed.index("| ternary W2A8 alone |") < printed.index("| float resnet20 |")


def test_scheme_a_keeps_its_jointly_trained_teacher_beside_the_student(tmp_path):
    (tmp_path / "distill.csv").write_text("epoch,seconds\n0,400\n1,500\n2,460\n")

    def deployed(scheme, top1):
        return {
            "scheme": scheme,
            "model": "m",
            "bits": "b",
            "tflite_top1": top1,
            "keras_top1": top1,
            "agreement": {"top1_agreement": 1.0},
        }

    results = {
        "rows": [deployed("teacher", 0.86), deployed("A", 0.85)],
        "curves": {"teacher (A, joint)": [0.4, 0.83, 0.86], "distilled (A)": [0.5, 0.7, 0.85]},
    }
    teacher, student = scheme_a_rows(results, tmp_path, "resnet56")
    assert teacher["row"] == "teacher resnet56 (float, trained jointly in scheme A, τ=4)"
    assert student["row"] == "ternary W2A8 + KD scheme A (τ=4)"
    assert (teacher["tflite_top1"], student["tflite_top1"]) == (0.86, 0.85)
    assert (teacher["epochs_to_95"], student["epochs_to_95"]) == (2, 3)
    assert teacher["seconds_per_epoch"] == student["seconds_per_epoch"] == 460
