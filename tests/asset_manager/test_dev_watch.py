"""`asset-manager dev`'s reaction to asset module changes: the watcher and the discovery request it sends."""

from __future__ import annotations

from pathlib import Path

import redis
from rich.console import Console

from asset_manager.dev import DevSystem
from asset_manager.settings import AppSettings
from libs.common.events import CATALOG, DiscoveryRequested, parse_event
from libs.common.testing import wait_for


class Recording(DevSystem):
    """A DevSystem whose reaction to a change is recorded instead of sent."""

    seen: list[list[str]]

    def on_assets_changed(self, files: list[str]) -> None:
        self.seen.append(files)


def test_python_files_added_changed_or_removed_are_reported_others_not(
    settings: AppSettings, tmp_path: Path
) -> None:
    watched = tmp_path / "assets"
    (watched / "loaders").mkdir(parents=True)
    system = Recording(settings, console=Console(file=None, quiet=True), watch_dir=watched)
    system.seen = []
    system.start_watching()
    try:
        new = watched / "loaders" / "new_loader.py"

        def written_and_seen() -> bool:
            # (re)written until seen: the watcher may still be registering when the test starts
            if not system.seen:
                new.write_text("all_assets = []\n")
            return bool(system.seen)

        wait_for(written_and_seen, what="the new module reported")
        assert system.seen[-1] == ["new_loader.py"]
        (watched / "notes.txt").write_text("not python")
        (watched / "loaders" / "new_loader.py").unlink()
        wait_for(lambda: len(system.seen) >= 2, what="the removal reported")
        assert all(files == ["new_loader.py"] for files in system.seen), system.seen
    finally:
        system.stop(grace_s=1)
    assert system._watcher is not None
    system._watcher.join(5)
    assert not system._watcher.is_alive()


def test_a_discovery_request_is_published_on_the_catalog_stream(
    settings: AppSettings, redis_client: redis.Redis
) -> None:
    system = DevSystem(settings, console=Console(quiet=True))
    system._redis_url = settings.redis.url
    assert system.request_discovery() == "discovery requested"
    ((_, fields),) = redis_client.xrange(f"{settings.bus.prefix}:{CATALOG}")
    event = parse_event(fields[b"event"])
    assert isinstance(event, DiscoveryRequested)
    assert event.data.code_location == settings.dagster.code_location
    assert event.data.requested_by == "asset-manager dev"
