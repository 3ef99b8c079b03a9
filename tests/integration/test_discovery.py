"""Client directories where frameworks put them, found by the real daemon (real inotify).

``client_dir_pattern`` is matched against a directory's path relative to ``watch_root``, so
client directories at any depth, per-run trees and Flower's ``global/`` (no client id) are
one config line each (README, "Using chunkd with your FL framework").
"""

from __future__ import annotations

from pathlib import Path

from fl_harness import restore_via_socket, restored_bytes, save_model, wait_ingests

#: The one line that adds Flower's ``global/`` to the default client directories.
WITH_GLOBAL = "client_(?P<client>[A-Za-z0-9_.-]+)|global"


def _db(directory: Path, client: str) -> Path:
    return directory / f"client_{client}_chunks.db"


def test_nested_client_and_global_dirs_created_while_running(make_daemon, tmp_path):
    daemon = make_daemon(client_dir_pattern=WITH_GLOBAL)
    run = daemon.watch_root / "outputs" / "2024-06-01" / "12-00-00"
    client_dir = run / "client_3"
    global_dir = run / "global"
    # Created after the daemon is ready, several levels at once (``mkdir -p``).
    client_dir.mkdir(parents=True)
    global_dir.mkdir(parents=True)
    daemon.wait_event(lambda e: e["event"] == "client.added", count=2)
    contents = {}
    for r in (1, 2):
        contents["3", r] = save_model(client_dir / f"model_round_{r}.pth", seed=r)
        contents["global", r] = save_model(global_dir / f"model_round_{r}.pth", seed=10 + r)
    # A directory inside a client directory is that client's data, never a client of its own.
    contents["3", 3] = save_model(client_dir / "client_9" / "model_round_3.pth", seed=3)
    wait_ingests(daemon, "3", 3)
    wait_ingests(daemon, "global", 2)
    added = {e["client"]: e["dir"] for e in daemon.events() if e["event"] == "client.added"}
    assert added == {"3": str(client_dir), "global": str(global_dir)}
    for (client, r), data in contents.items():
        directory = client_dir if client == "3" else global_dir
        assert restored_bytes(_db(directory, client), r) == data
        assert restore_via_socket(daemon, client, r, tmp_path / f"{client}-{r}.pth") == data


def test_runs_kept_apart_by_a_run_group_and_found_at_start_up(make_daemon):
    pattern = r"^outputs/(?P<run>[^/]+/[^/]+)/(?:client_(?P<client>\d+)|global)"
    daemon = make_daemon(start=False, client_dir_pattern=pattern)
    first = daemon.watch_root / "outputs" / "2024-06-01" / "12-00-00"
    second = daemon.watch_root / "outputs" / "2024-06-02" / "09-30-00"
    before = save_model(first / "client_1" / "model_round_1.pth", seed=1)
    # Not under outputs/<date>/<time>/: the anchored pattern does not make it a client.
    save_model(daemon.watch_root / "scratch" / "client_1" / "model_round_1.pth", seed=5)
    daemon.start()
    wait_ingests(daemon, "2024-06-01-12-00-00_1", 1)
    after = save_model(second / "client_1" / "model_round_1.pth", seed=2)
    glob = save_model(second / "global" / "model_round_1.pth", seed=3)
    wait_ingests(daemon, "2024-06-02-09-30-00_1", 1)
    wait_ingests(daemon, "2024-06-02-09-30-00_global", 1)
    clients = {e["client"] for e in daemon.events() if e["event"] == "client.added"}
    assert clients == {
        "2024-06-01-12-00-00_1",
        "2024-06-02-09-30-00_1",
        "2024-06-02-09-30-00_global",
    }
    assert restored_bytes(_db(first / "client_1", "2024-06-01-12-00-00_1"), 1) == before
    assert restored_bytes(_db(second / "client_1", "2024-06-02-09-30-00_1"), 1) == after
    assert restored_bytes(_db(second / "global", "2024-06-02-09-30-00_global"), 1) == glob
    assert not (daemon.watch_root / "scratch" / "client_1" / "client_1_chunks.db").exists()


def test_two_directories_with_one_id_first_found_wins(make_daemon):
    daemon = make_daemon(start=False)
    first = daemon.watch_root / "outputs" / "a" / "client_1"
    second = daemon.watch_root / "outputs" / "b" / "client_1"
    kept = save_model(first / "model_round_1.pth", seed=1)
    save_model(second / "model_round_2.pth", seed=2)
    daemon.start()
    wait_ingests(daemon, "1", 1)
    warned = daemon.wait_event(
        lambda e: e["event"] == "client.added" and e.get("level") == "warning", timeout_s=10
    )
    assert warned[0]["dir"] == str(second) and str(first) in warned[0]["error"]
    assert [e["path"] for e in daemon.ingested("1")] == [str(first / "model_round_1.pth")]
    assert restored_bytes(_db(first, "1"), 1) == kept
    assert not _db(second, "1").exists()
