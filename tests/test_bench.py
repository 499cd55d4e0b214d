"""bitlm-bench: every benchmark runs on tiny settings and reports its fields; the statistics and
the memory accounting are checked on numbers known in advance. Speeds are never asserted."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from bitlm.bench.compare import (
    file_table,
    markdown_table,
    parse_variants,
    per_file,
    summarize,
    welch,
)
from bitlm.bench.memory import saved_activation_bytes
from bitlm.core.errors import BitLMError
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from tests.conftest import assert_user_error

TINY = ("model=tiny", "repeats=1")


def _bench(run_cli, tmp_path, name, *overrides):
    result = run_cli("bench", name, *TINY, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json
    assert report["benchmark"] == name
    assert report.get("repeats") == (None if name == "compare" else 1)  # compare is not timed
    assert report["machine"]["cpu_count"] >= 1
    return report


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_codec_reports_both_directions_against_the_reference(run_cli, tmp_path):
    report = _bench(run_cli, tmp_path, "codec", "n_bytes=50000", "reference_bytes=2000")
    results = report["results"]
    for side in ("bitlm", "reference"):
        assert results[side]["encode_mb_per_s"] > 0 and results[side]["decode_mb_per_s"] > 0
    assert results["encode_speedup"] == pytest.approx(
        results["bitlm"]["encode_mb_per_s"] / results["reference"]["encode_mb_per_s"]
    )


def test_memory_reversible_saves_the_same_at_every_depth(run_cli, tmp_path):
    report = _bench(
        run_cli,
        tmp_path,
        "memory",
        "depths=[1,3]",
        "stacks=[reversible,plain]",
        "batch_size=2",
        f"plot={tmp_path / 'memory.png'}",
    )
    assert _is_png(tmp_path / "memory.png")
    rev, plain = report["results"]["reversible"], report["results"]["plain"]
    assert rev["1"]["saved_bytes"] == rev["3"]["saved_bytes"] > 0
    assert rev["3"]["saved_bytes_vs_1_layers"] == 1.0
    assert plain["3"]["saved_bytes"] > 2 * plain["1"]["saved_bytes"] * 0.9
    assert plain["3"]["step_time_vs_plain"] == 1.0
    for row in (*rev.values(), *plain.values()):
        assert row["peak_bytes"] >= 0 and row["step_seconds"] > 0 and row["parameters"] > 0


def test_attention_reports_time_and_memory_ratios(run_cli, tmp_path):
    figure = tmp_path / "attention.png"
    report = _bench(
        run_cli, tmp_path, "attention", "lengths=[90,180]", "chunk_size=45", f"plot={figure}"
    )
    assert _is_png(figure)
    assert report["chunk_size"] == 45
    for length in ("90", "180"):
        row = report["results"][length]
        assert row["chunked"]["seconds"] > 0 and row["unchunked"]["seconds"] > 0
        assert row["time_chunked_vs_unchunked"] == pytest.approx(
            row["chunked"]["seconds"] / row["unchunked"]["seconds"]
        )
        assert row["memory_chunked_vs_unchunked"] >= 0


def test_generate_reports_batched_and_uncached_speed(run_cli, tmp_path):
    figure = tmp_path / "generate.png"
    report = _bench(
        run_cli,
        tmp_path,
        "generate",
        "contexts=[90,180]",
        "new_bytes=2",
        "batch_sizes=[1,3]",
        "uncached=true",
        "repeats=1",
        f"plot={figure}",
    )
    assert _is_png(figure)
    assert report["max_seq_len"] >= 180 + 9 * 2 and report["batch_sizes"] == [1, 3]
    assert [row["context_bits"] for row in report["results"].values()] == [90, 180]
    for row in report["results"].values():
        assert row["cache_speedup"] == pytest.approx(
            row["batch_1"]["bytes_per_s"] / row["uncached"]["bytes_per_s"]
        )
        assert row["batch_speedup"]["3"] == pytest.approx(
            row["batch_3"]["bytes_per_s"] / row["batch_1"]["bytes_per_s"]
        )
        assert row["batch_3"]["bytes_per_s"] == pytest.approx(3 * 2 / row["batch_3"]["seconds"])


@pytest.mark.parametrize(("trunk", "positions_per_byte"), [("flat", 9), ("hierarchical", 1)])
def test_train_throughput_reports_overhead_per_precision(
    run_cli, tmp_path, trunk, positions_per_byte
):
    report = _bench(
        run_cli,
        tmp_path,
        "train-throughput",
        "steps=4",
        "untimed_steps=1",
        "batch_size=2",
        "precisions=[32-true]",
        f"model.trunk={trunk}",
    )
    row = report["results"]["32-true"]
    for loop in ("lightning", "plain"):
        expected = positions_per_byte * row[loop]["bytes_per_s"]
        assert row[loop]["positions_per_s"] == pytest.approx(expected)
    assert row["overhead"] == pytest.approx(
        1 - row["lightning"]["positions_per_s"] / row["plain"]["positions_per_s"]
    )
    steps_per_s = row["lightning"]["bytes_per_s"] / (2 * 32)  # batch 2 × 32-byte windows
    assert row["flops_per_step"] > 0 and row["mfu"] is None  # no peak figure for a CPU
    assert row["flops_per_s"] == pytest.approx(row["flops_per_step"] * steps_per_s)


def test_train_throughput_stacks_mode_times_the_four_steps_interleaved(run_cli, tmp_path):
    stacks = ("mode=stacks", "contexts=[8]", "steps=3", "untimed_steps=1", "batch_size=2")
    result = run_cli(
        "bench", "train-throughput", *TINY, *stacks, "precisions=[32-true]", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    context = result.json["results"]["32-true"]["8"]  # every timed step is a paired round
    assert set(context["variants"]) == {
        f"{model}/{stack}"
        for model in ("hierarchical", "byte_baseline")
        for stack in ("plain", "reversible")
    }
    for row in context["variants"].values():
        assert row["bytes_per_s"] == pytest.approx(2 * 8 / (row["ms_per_step"] / 1e3))
        assert len(row["seconds"]) == 2  # the timed rounds
    assert context["ratios"]["hierarchical: reversible/plain"] > 0


def test_compare_trains_variants_over_seeds_and_writes_table_and_plot(
    run_cli, tmp_path, english_file
):
    out = tmp_path / "cmp"
    report = _bench(
        run_cli,
        tmp_path,
        "compare",
        'variants=["bit: model=tiny","byte: model=tiny model.unit=byte model.trunk=flat"]',
        "seeds=[1,2]",
        "budget_s=2",
        "probe_steps=3",
        "probe_rounds=1",
        f"eval_files=[{english_file}]",
        f"out_dir={out}",
    )
    assert set(report["runs"]) == {"bit", "byte"}
    assert all(len(runs) == 2 for runs in report["runs"].values())
    assert all(run["steps"] >= 1 and run["eval_bpb"] > 0 for run in report["runs"]["bit"])
    versus = report["summary"]["byte"]["eval_bpb_vs_bit"]
    assert 0 <= versus["welch"]["p"] <= 1
    assert set(report["references"]) == {"gzip-9", "bzip2-9", "xz-9e", "zstd-19"}
    assert "| byte |" in (out / "table.md").read_text()
    file_bpb = report["summary"]["byte"]["file_bpb"]["held_out.txt"]  # the one file: as a whole
    assert file_bpb["mean"] == pytest.approx(report["summary"]["byte"]["eval_bpb"]["mean"])
    assert file_bpb["gap"] == pytest.approx(versus["gap"])
    assert "| variant | held_out.txt |" in (out / "table.md").read_text()
    assert _is_png(out / "compare.png")
    assert (out / "results.json").is_file() and (out / "bit" / "seed_2" / "model").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "unknown benchmark 'nope'"),
        ((), "which benchmark?"),
        (("codec", "repeats=0"), "repeats must be a positive number"),
        (("memory", "stacks=[wide]"), "unknown stack(s) ['wide']"),
        (("compare", 'variants=["no colon"]'), "not 'NAME: override"),
        (("codec", "plot=x.png"), "plot= is for memory"),
        (("memory", "depths=[]"), "depths must be a non-empty list"),
        (("train-throughput", "precisions=[16-mixed]"), "precisions ['16-mixed'] not supported"),
    ],
)
def test_bad_input_is_one_line(refused, tmp_path, args, message):
    assert_user_error(refused("bench", *args, cwd=tmp_path), message)


def test_saved_activation_bytes_exclude_parameters_and_track_depth():
    torch.manual_seed(0)
    batch = torch.randint(0, 2, (2, 90), dtype=torch.uint8)

    def saved(**fields) -> int:
        config = ModelConfig(d_model=32, n_heads=2, max_seq_len=90, **fields)
        return saved_activation_bytes(build_model(config).train(), batch)

    assert saved(n_layers=1) == saved(n_layers=4)  # reversible: only the stack's outputs
    assert saved(n_layers=4, reversible=False) > 3 * saved(n_layers=1, reversible=False) * 0.8
    assert saved(n_layers=4, reversible=False, activation_checkpointing=True) < saved(
        n_layers=4, reversible=False
    )


def test_parse_variants():
    assert parse_variants(["a: model=tiny x=1", "b:model=small"]) == {
        "a": ["model=tiny", "x=1"],
        "b": ["model=small"],
    }
    with pytest.raises(BitLMError, match="repeated name"):
        parse_variants(["a: x=1", "a: x=2"])


def test_summary_means_gaps_and_welch_match_scipy():
    runs = {
        "bit": [
            {"eval_bpb": b, "val_bpb": b - 0.1, "steps": 10, "seconds": 60, "train_bytes": 600}
            for b in (3, 3.2, 3.4)
        ],
        "byte": [
            {"eval_bpb": b, "val_bpb": b, "steps": 90, "seconds": 60, "train_bytes": 1200 * b}
            for b in (2.0, 2.1, 2.3)
        ],
    }
    summary = summarize(runs)
    assert summary["bit"]["eval_bpb"]["mean"] == pytest.approx(3.2)
    assert summary["bit"]["eval_bpb"]["std"] == pytest.approx(0.2)
    versus = summary["byte"]["eval_bpb_vs_bit"]
    assert versus["gap"] == pytest.approx((6.4 / 3) / 3.2 - 1)  # byte: a third fewer bits
    expected = stats.ttest_ind([3, 3.2, 3.4], [2.0, 2.1, 2.3], equal_var=False)
    assert versus["welch"]["p"] == pytest.approx(expected.pvalue)
    assert summary["bit"]["bytes_per_s"] == {"mean": 10.0, "std": 0.0}
    assert summary["byte"]["bytes_per_s"]["mean"] == pytest.approx(20 * 6.4 / 3)
    assert welch([1.0], [2.0, 3.0]) is None
    table = markdown_table(summary, {"gzip-9": 2.7})
    assert "| bit | 3.200 ± 0.200 |" in table and "| gzip-9 (compressor) | 2.700 |" in table
    assert "| 10 ± 0 | — | — |" in table  # bit's bytes/s; no gap to itself
    assert summarize({"a": runs["bit"][:1]})["a"]["eval_bpb"]["std"] is None  # JSON null


def test_per_file_table_gives_each_held_out_text_its_gap():
    def rows(legal, code):
        pairs = zip(legal, code, strict=True)
        return [{"file_bpb": {"legal.txt": a, "code.py": b}} for a, b in pairs]

    first, other = rows([3.0, 3.2], [4.0, 4.0]), rows([2.7, 2.9], [4.4, 4.4])
    files = per_file(other, first)
    assert files["legal.txt"]["mean"] == pytest.approx(2.8)
    assert files["legal.txt"]["gap"] == pytest.approx(2.8 / 3.1 - 1)  # better on legal text …
    assert files["code.py"]["gap"] == pytest.approx(0.1)  # … and 10 % worse on code
    summary = {"a": {"file_bpb": per_file(first, first)}, "b": {"file_bpb": files}}
    table = file_table(summary, {"legal.txt": {"gzip-9": 2.5}, "code.py": {"gzip-9": 2.0}})
    assert "| variant | legal.txt | code.py |" in table
    assert "| b | 2.800 ± 0.141 (-9.7%) | 4.400 ± 0.000 (+10.0%) |" in table
    assert "| gzip-9 (compressor) | 2.500 | 2.000 |" in table


def test_telemetry_reports_overhead_at_the_cadence_and_lz76_speed(run_cli, tmp_path):
    report = _bench(
        run_cli,
        tmp_path,
        "telemetry",
        "steps=4",
        "untimed_steps=1",
        "batch_size=2",
        "every_n_steps=10",
        "lz76_batch=4",
        "lz76_bits=256",
    )
    step = report["step_seconds"]
    monitor = (step["every_step"] - step["on"]) / (10 * step["off"])
    assert report["overhead"] == pytest.approx(step["on"] / step["off"] - 1 + monitor)
    assert report["overhead_instrumented"] == pytest.approx(
        step["instrumented"] / step["off"] - 1 + monitor
    )
    assert report["flop_count_seconds"] > 0
    lz76 = report["lz76"]
    assert lz76["per_training_step"] == pytest.approx(
        lz76["seconds"] / lz76["training_step_seconds"]
    )


def test_rle_reports_speed_against_the_reference_and_the_size_of_text_bits(run_cli, tmp_path):
    report = _bench(run_cli, tmp_path, "rle", "n_bytes=40000", "reference_bytes=2000")
    assert report["results"]["bitlm"]["encode_mb_per_s"] > 0
    assert 1.5 < report["mean_run_bits"] < 2.5  # text bits: short runs
    assert report["compressed_over_packed_bits"] > 1  # coding text bits makes them larger


def test_prepare_reports_speed_against_a_copy_and_its_peak_memory(run_cli, tmp_path):
    report = _bench(run_cli, tmp_path, "prepare", "n_bytes=3000000")
    assert report["prepare_mb_per_s"] > 0 and report["copy_mb_per_s"] > 0
    assert report["prepare_over_copy"] == pytest.approx(
        report["prepare_mb_per_s"] / report["copy_mb_per_s"]
    )
    assert 0 <= report["peak_memory_mb"] < 64  # streams: far below what a 3 MB input could need


def test_dataloader_reports_batches_against_training_steps(run_cli, tmp_path):
    report = _bench(
        run_cli,
        tmp_path,
        "dataloader",
        "n_bytes=2000000",
        "loader_batches=30",
        "steps=3",
        "batch_size=4",
    )
    assert report["loader_over_training"] == pytest.approx(
        report["loader_batches_per_s"] / report["training_steps_per_s"]
    )
