"""bitlm-prepare and data=memmap: streaming, atomic output, the index and split, odd inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bitlm.core.errors import BitLMError
from bitlm.data import ByteStore, split_segments
from bitlm.data.prepare import file_sources, hf_source, prepare
from bitlm.training.datamodule import BitDataModule
from tests.conftest import ENGLISH, TINY_TRAIN

TEXT = (ENGLISH * 40).encode()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_prepared_folder_holds_the_terminated_documents_an_index_and_the_split(tmp_path):
    _write(tmp_path / "in" / "a.txt", TEXT)  # ends with a space: a newline is added
    _write(tmp_path / "in" / "b.bin", bytes(range(256)) * 8)  # binary data is valid input
    _write(tmp_path / "in" / "c.txt", b"last line\n")
    index = prepare(file_sources([tmp_path / "in"]), tmp_path / "out", progress=False)
    data = (tmp_path / "out" / "bytes.u8").read_bytes()
    assert data == TEXT + b"\n" + bytes(range(256)) * 8 + b"\n" + b"last line\n"
    sources = index["sources"]
    assert [Path(s["name"]).name for s in sources] == ["a.txt", "b.bin", "c.txt"]
    for source in sources:
        start, size = source["offset"], source["bytes"]
        assert data[start : start + size].rstrip(b"\n") == (
            tmp_path / "in" / Path(source["name"]).name
        ).read_bytes().rstrip(b"\n")
    split = index["split"]
    assert split["chunk_bytes"] == len(data) // 20  # shrunk: the text is shorter than 20 chunks
    _, val = split_segments(len(data), 0.05, split["chunk_bytes"])
    assert split["val_bytes"] == sum(e - s for s, e in val) > 0
    assert split["train_bytes"] + split["val_bytes"] == index["bytes"] == len(data)
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == index


def test_data_module_trains_from_the_prepared_split(tmp_path):
    _write(tmp_path / "in.txt", TEXT * 4)
    prepare(
        file_sources([tmp_path / "in.txt"]), tmp_path / "out", split_chunk_bytes=512, progress=False
    )
    module = BitDataModule(path=str(tmp_path / "out"), seq_len=288, batch_size=4)
    module.setup("fit")
    data = np.fromfile(tmp_path / "out" / "bytes.u8", dtype=np.uint8)
    _, val = split_segments(len(data), 0.05, 512)
    val_bytes = {i for s, e in val for i in range(s, e)}
    for i in range(len(module.train_set)):  # no training window touches a validation byte
        start = module.train_set.offset(i)
        assert not val_bytes.intersection(range(start, start + 32))
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (4, 288)
    with pytest.raises(BitLMError, match="not both"):
        BitDataModule(path=str(tmp_path / "out"), paths=["x.txt"])


def test_output_that_exists_is_replaced_only_with_overwrite_and_only_if_prepared(tmp_path):
    _write(tmp_path / "in.txt", TEXT)
    prepare(file_sources([tmp_path / "in.txt"]), tmp_path / "out", progress=False)
    with pytest.raises(BitLMError, match="overwrite=true"):
        prepare(file_sources([tmp_path / "in.txt"]), tmp_path / "out", progress=False)
    _write(tmp_path / "in.txt", TEXT * 2)
    prepare(file_sources([tmp_path / "in.txt"]), tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "out" / "bytes.u8").stat().st_size == len(TEXT) * 2 + 1
    mine = _write(tmp_path / "mine" / "notes.txt", b"mine")
    with pytest.raises(BitLMError, match="not a prepared data folder"):
        prepare(
            file_sources([tmp_path / "in.txt"]), tmp_path / "mine", overwrite=True, progress=False
        )
    assert mine.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "mine", "out"]  # no leftovers


def test_a_failure_while_preparing_leaves_nothing_behind(tmp_path):
    def documents():
        yield [b"some text\n"]
        raise OSError("disk went away")

    from bitlm.data.prepare import Source

    with pytest.raises(OSError, match="disk went away"):
        prepare([Source("broken", documents())], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_empty_and_too_short_inputs_are_refused(tmp_path):
    empty = _write(tmp_path / "empty.txt", b"")
    with pytest.raises(BitLMError, match="is empty"):
        file_sources([empty])
    short = _write(tmp_path / "short.txt", b"0123456789")
    with pytest.raises(BitLMError, match="cannot be split into 20 chunks"):
        prepare(file_sources([short]), tmp_path / "out", progress=False)
    _write(tmp_path / "small.txt", TEXT[:3000])
    prepare(file_sources([tmp_path / "small.txt"]), tmp_path / "small", progress=False)
    module = BitDataModule(path=str(tmp_path / "small"), seq_len=1800, batch_size=4)
    with pytest.raises(BitLMError, match="chunks of 150 bytes are shorter than one window"):
        module.setup("fit")


def test_a_damaged_or_foreign_folder_is_refused(tmp_path):
    with pytest.raises(BitLMError, match="not a prepared data folder"):
        ByteStore.from_prepared(tmp_path)
    _write(tmp_path / "in.txt", TEXT)
    prepare(file_sources([tmp_path / "in.txt"]), tmp_path / "out", progress=False)
    with (tmp_path / "out" / "bytes.u8").open("r+b") as handle:
        handle.truncate(100)
    with pytest.raises(BitLMError, match="the folder is damaged"):
        ByteStore.from_prepared(tmp_path / "out")
    (tmp_path / "out" / "index.json").write_text("{}")
    with pytest.raises(BitLMError, match="lacks format, bytes"):
        ByteStore.from_prepared(tmp_path / "out")


_PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from bitlm.data.prepare import file_sources, prepare
    prepare(file_sources([sys.argv[1]]), sys.argv[2], progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
    """
)


def _peak_rss_kib(source: Path, output: Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(source), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(proc.stdout.split()[-1])


def test_memory_stays_flat_for_a_single_enormous_line(tmp_path):
    small = _write(tmp_path / "small.txt", TEXT)
    big = tmp_path / "line.txt"
    with big.open("wb") as handle:  # 96 MB without a newline
        block = ENGLISH.encode().replace(b"\n", b" ") * (1 << 13)
        while handle.tell() < 96 << 20:
            handle.write(block)
    baseline = _peak_rss_kib(small, tmp_path / "out-small")
    peak = _peak_rss_kib(big, tmp_path / "out-big")
    assert peak - baseline < 32 << 10, (baseline, peak)  # < 32 MB more for 96 MB of input
    assert (tmp_path / "out-big" / "bytes.u8").stat().st_size == big.stat().st_size + 1


# --- Hugging Face datasets (local folders: the hub is out of reach here) ---------------------

datasets = pytest.importorskip("datasets")
RECORDS = [ENGLISH * 3, "", "a record ending in a newline\n", ENGLISH * 2]


def test_a_saved_dataset_folder_is_read_record_by_record(tmp_path):
    datasets.Dataset.from_dict({"text": RECORDS, "id": [1, 2, 3, 4]}).save_to_disk(tmp_path / "ds")
    index = prepare([hf_source(str(tmp_path / "ds"))], tmp_path / "out", progress=False)
    expected = "".join(r if r.endswith("\n") else r + "\n" for r in RECORDS if r)
    assert (tmp_path / "out" / "bytes.u8").read_bytes() == expected.encode()
    assert index["sources"][0]["documents"] == 3  # the empty record adds nothing
    with pytest.raises(BitLMError, match="no column 'body'"):
        hf_source(str(tmp_path / "ds"), text_field="body")


def test_a_folder_of_data_files_and_a_dataset_dict_are_read(tmp_path):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in RECORDS))
    prepare([hf_source(str(folder))], tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "bytes.u8").read_bytes().startswith(ENGLISH.encode())
    splits = {"train": datasets.Dataset.from_dict({"text": RECORDS})}
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "dict")
    with pytest.raises(BitLMError, match=r"no split 'validation': its splits are \['train'\]"):
        hf_source(str(tmp_path / "dict"), split="validation")


def test_an_unreachable_hub_dataset_fails_with_one_clear_line(tmp_path, run_cli):
    os.environ["HF_HUB_OFFLINE"] = "1"  # what no network looks like, without waiting on retries
    try:
        result = run_cli(
            "prepare", "hf_dataset=nobody/nothing", f"output={tmp_path / 'o'}", cwd=tmp_path
        )
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert result.returncode == 2
    assert "error: cannot load Hugging Face dataset 'nobody/nothing'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


# --- the command ----------------------------------------------------------------------------


def test_prepare_then_train_through_the_commands(tmp_path, run_cli):
    _write(tmp_path / "books" / "one.txt", TEXT * 3)
    _write(tmp_path / "books" / "two.md", TEXT * 3)
    result = run_cli("prepare", "inputs=[books/]", "output=data", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.json
    assert summary["bytes"] == 6 * len(TEXT) + 2 and summary["sources"] == 2
    trained = run_cli(
        "train",
        *TINY_TRAIN,
        "data=memmap",
        "data.path=data",
        "trainer.max_steps=5",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.json["steps"] == 5
    nothing = run_cli("prepare", "output=x", cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to prepare" in nothing.stderr
