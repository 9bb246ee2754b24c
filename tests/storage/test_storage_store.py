from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from leveret.storage import MessageStore, MetadataStore


def test_message_store_keys_and_delete(tmp_path: Path) -> None:
    ms = MessageStore(tmp_path / "data", segment_size=1024)
    keys = ["/" + "/q1", "vhost/../weird name ✓", "a" * 300]
    for k in keys:
        q = ms.open_queue(k)
        assert ms.open_queue(k) is q
        q.recover()
        q.append(k.encode())
    assert ms.list_queue_keys() == sorted(keys)
    job = ms.sync_job()
    assert job is not None
    job()
    assert ms.sync_job() is None
    ms.delete_queue(keys[0])
    ms.delete_queue("never existed")
    assert ms.list_queue_keys() == sorted(keys[1:])
    ms.close()

    ms2 = MessageStore(tmp_path / "data", segment_size=1024)
    assert ms2.list_queue_keys() == sorted(keys[1:])
    q = ms2.open_queue(keys[1])
    seen: list[bytes] = []
    q.recover(lambda p, v: seen.append(bytes(v)))
    assert seen == [keys[1].encode()]
    ms2.delete_queue(keys[2])  # not opened in this process
    assert ms2.list_queue_keys() == [keys[1]]
    assert len(os.listdir(tmp_path / "data")) == 1
    ms2.close()
    # a queue directory whose removal was interrupted is neither listed nor kept
    stale = tmp_path / "data" / "x.deleted"
    stale.mkdir()
    (stale / "key").write_text("ghost")
    assert MessageStore(tmp_path / "data").list_queue_keys() == [keys[1]]
    assert not stale.exists()


def test_message_store_combined_sync_job(tmp_path: Path) -> None:
    ms = MessageStore(tmp_path)
    a, b = ms.open_queue("a"), ms.open_queue("b")
    a.append(b"1")
    b.append(b"2")
    job = ms.sync_job()
    assert job is not None
    ms.close()
    job()


def test_metadata_missing_save_load(tmp_path: Path) -> None:
    m = MetadataStore(tmp_path / "defs.json")
    assert m.load() == {}
    m.save({"queues": [{"name": "q", "durable": True}]})
    m.save({"queues": [], "v": 2})
    assert m.load() == {"queues": [], "v": 2}
    assert json.loads((tmp_path / "defs.json.bak").read_text())["queues"][0]["name"] == "q"
    assert not (tmp_path / "defs.json.tmp").exists()


def test_metadata_corrupt_falls_back_to_bak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "defs.json"
    m = MetadataStore(path)
    m.save({"v": 1})
    m.save({"v": 2})
    path.write_bytes(b'{"v": 2, "tru')  # torn
    with caplog.at_level(logging.ERROR):
        assert m.load() == {"v": 1}
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    # the corrupt file must not replace the good backup on the next save
    m.save({"v": 3})
    assert MetadataStore(path).load() == {"v": 3}
    assert json.loads((tmp_path / "defs.json.bak").read_text()) == {"v": 1}


def test_metadata_crash_between_renames(tmp_path: Path) -> None:
    path = tmp_path / "defs.json"
    m = MetadataStore(path)
    m.save({"v": 1})
    os.replace(path, str(path) + ".bak")  # as if we died right after rotating
    assert m.load() == {"v": 1}


def test_metadata_both_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "defs.json"
    path.write_bytes(b"[1, 2]")
    (tmp_path / "defs.json.bak").write_bytes(b"\xff\xfe")
    assert MetadataStore(path).load() == {}
    assert (tmp_path / "defs.json.corrupt").exists()
