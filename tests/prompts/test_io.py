import pandas as pd
import pytest

from arena_cje.prompts import extract_arena_prompts, read_arena_export

from .arena_fixture import arena_frame, expected_kept_ids, write_arena_fixture


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_every_export_format_gives_the_same_prompts(tmp_path, suffix):
    path = write_arena_fixture(tmp_path / f"arena{suffix}")
    prompts, steps = extract_arena_prompts(read_arena_export(path))
    reference, ref_steps = extract_arena_prompts(arena_frame())
    assert set(prompts["prompt_id"]) == expected_kept_ids()
    pd.testing.assert_frame_equal(prompts, reference, check_dtype=False)
    assert steps == ref_steps


def test_a_folder_of_shards_is_concatenated(tmp_path):
    df = arena_frame()
    folder = tmp_path / "shards"
    folder.mkdir()
    df.iloc[:10].to_parquet(folder / "train-00000.parquet")
    df.iloc[10:].to_parquet(folder / "train-00001.parquet")
    (folder / "README.md").write_text("ignored")
    assert len(read_arena_export(folder)) == len(df)


def test_missing_and_unsupported_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Arena export"):
        read_arena_export(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet"):
        read_arena_export(tmp_path / "empty")
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        read_arena_export(tmp_path / "a.csv")
