"""The benchmark suite's tiny configuration runs end to end and writes sane tables."""

import csv
import math

import pytest

from benchmarks import memory, run


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmarks")
    return run.main(["--quick", "--output", str(output)])


def test_quick_run_writes_csv_and_markdown(quick_report):
    assert quick_report.csv_path.exists() and quick_report.md_path.exists()
    with open(quick_report.csv_path) as f:
        rows = list(csv.DictReader(f))
    sections = {row["section"].split(".")[0] for row in rows}
    assert {"1", "2b", "3", "4a", "4b", "5", "6"} <= sections
    for row in rows:
        assert math.isfinite(float(row["value"])), row
        fitted = "slope" in row["metric"] or row["metric"].startswith("β")
        if not fitted:  # fitted slopes of tiny, dispatch-bound steps are noise around 0, of either sign
            assert float(row["value"]) > 0, row
        assert row["status"] in ("", "meets", "misses"), row
    markdown = quick_report.md_path.read_text()
    assert quick_report.header["name"] in markdown and "## 1. step-time overhead" in markdown


def test_quick_run_keeps_to_its_own_table(quick_report):
    # The committed full-size tables are <hardware-tag>.md; a tiny run must never overwrite them.
    assert quick_report.header["tag"].endswith("-quick")
    assert quick_report.md_path.name == f"{quick_report.header['tag']}.md"


def test_gradient_evaluations_are_counted_not_assumed(quick_report):
    rk4 = [r for r in quick_report.rows if r.section.startswith("1.") and r.method == "rk4"]
    assert rk4 and all(r.metric.startswith("time / (4 × sgd step)") for r in rk4)


def test_implicit_methods_are_timed_against_rk4(quick_report):
    rows = [r for r in quick_report.rows if r.section.startswith("6.")]
    assert [r.method for r in rows] == ["backward_euler", "bdf2"]
    assert all(r.metric.startswith("time / rk4 time") and r.note.startswith("4") for r in rows)


def test_multidevice_step_matches_single_device(quick_report):
    rows = [r for r in quick_report.rows if r.section.startswith("5.")]
    assert [r.model.split()[0] for r in rows] == ["1", "2"]
    for row in rows:
        gap = float(row.note.split("= ")[1].split(";")[0])
        assert gap < 1e-5
    # Each device's program does about half the floating-point work of the single-device one.
    assert rows[1].value == pytest.approx(1.0, abs=0.1)


def test_sharded_parameters_divide_the_state_per_device(quick_report):
    rows = [r for r in quick_report.rows if r.section.startswith("5b.")]
    assert rows[0].metric.startswith("state bytes per device") and rows[1].metric.startswith("compiled step memory")
    assert rows[0].value == pytest.approx(0.5, abs=0.01) and rows[0].status == "meets"  # 2 devices
    assert float(rows[0].note.split("= ")[1].split(";")[0]) < 1e-5


def test_two_processes_against_one_process(quick_report):
    rows = [r for r in quick_report.rows if r.section.startswith("5c.")]
    assert [r.model.split()[0] for r in rows] == ["2"], quick_report.notes
    assert rows[0].metric.startswith("2-process step time / 1-process step time")
    gap = float(rows[0].note.split("= ")[1].split(";")[0])
    assert gap < 1e-5 and rows[0].value > 0


def test_memory_multiples_of_parameter_size(quick_report):
    rows = {r.method: r.value for r in quick_report.rows if r.section.startswith("3.")}
    assert rows["optax.sgd"] >= 1.0  # at least the parameters themselves
    assert rows["rk4"] >= 1.0


@pytest.mark.parametrize(
    "method, buffers",
    [
        ("optax.sgd", 2),
        ("euler", 2),
        ("heun", 3),
        ("rk4", 3),
        ("dopri5-fixed", 6),
        ("optax.adam", 4),
        ("rkc-s5", 4),
        ("rkc-s50", 4),
        ("rkc2-s5", 5),  # k1 as well, which every stage reads
        ("rkc2-s50", 5),
    ],
)
def test_minimum_buffer_model(method, buffers):
    # θ, the running sum and the stage being evaluated (its point and gradient as one); Heun's sum is k1 itself,
    # RK4's stages read only the previous k, Dopri5's sixth stage point reads all five before it. RKC holds θ,
    # the two latest stage differences and the stage point.
    assert memory.minimum_buffers(method) == buffers


def test_chebyshev_buffers_at_few_stages():
    # One stage is SGD; with two, Y_1 - θ is a multiple of k1; order 2 reads k1 at every stage.
    assert [memory.chebyshev_buffers(1, s) for s in (1, 2, 3, 4, 50)] == [2, 3, 4, 4, 4]
    assert [memory.chebyshev_buffers(2, s) for s in (2, 3, 4, 50)] == [3, 4, 5, 5]
