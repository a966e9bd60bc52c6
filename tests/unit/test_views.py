"""views.py: a path resolved in another root, as the CNI server resolves its client's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deviceid_inject import views


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A client's root: /run/k8s with /var/run -> /run (absolute), a relative link, a loop."""
    (tmp_path / "run" / "k8s" / "devinfo").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")
    (tmp_path / "var" / "here").symlink_to("../run/k8s")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "file").write_text("x")
    return tmp_path


@pytest.fixture
def root_fd(root: Path):
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/run/k8s/devinfo", "run/k8s/devinfo"),
        ("/var/run/k8s/devinfo", "run/k8s/devinfo"),  # the absolute link resolves inside the root
        ("/var/here/devinfo", "run/k8s/devinfo"),
        ("/../../run/k8s", "run/k8s"),  # ".." stops at the root
        ("/", "."),
    ],
)
def test_paths_resolve_inside_the_root(root, root_fd, path, expected):
    found = views.stat_in(root_fd, path)
    assert found is not None and (found.st_dev, found.st_ino) == identity(root / expected)


@pytest.mark.parametrize("path", ["/nothing", "/loop/x", "/file/below", "/run/k8s/none"])
def test_what_does_not_resolve_is_none(root_fd, path):
    assert views.stat_in(root_fd, path) is None


def test_the_same_folder_is_the_same_and_another_is_named(root, root_fd, tmp_path):
    # The server's own root is "/": the client's root here is a folder of it, so /tmp/... paths
    # are another folder for the client (it has no such path) and the host's / is not its /.
    inside = str(root / "run" / "k8s")
    own = os.open("/", os.O_PATH)
    try:
        assert views.differs({"deviceInfoRoot": inside}, own) is None
    finally:
        os.close(own)
    reason = views.differs({"deviceInfoRoot": inside}, root_fd)
    assert reason is not None and reason.startswith(f"deviceInfoRoot {inside}: ")
