from arena_cje.crowd import RawFile
from arena_cje.pipelines.labeling.datasets import RawFileArchive, RawFileDataset


def test_raw_file_round_trip_and_archive_never_overwrites(tmp_path):
    data = b"\xef\xbb\xbftask_id;worker_id;rating\r\nt1;w;7,5\r\n"
    dataset = RawFileDataset(filepath=str(tmp_path / "labels" / "crowd_ratings.csv"))
    dataset.save(RawFile("x.csv", data))
    assert dataset.load() == RawFile("crowd_ratings.csv", data)
    archive = RawFileArchive(path=str(tmp_path / "archive"))
    archive.save(dataset.load())
    archive.save(dataset.load())
    names = archive.load()
    assert len(names) == 2 and all(n.endswith("_crowd_ratings.csv") for n in names)
    assert all((tmp_path / "archive" / n).read_bytes() == data for n in names)
