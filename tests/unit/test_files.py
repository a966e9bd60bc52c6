"""Safe file primitives: containment under a root, atomic JSON writes, refusing symlinks, removal."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from deviceid_inject import files


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / "cni").mkdir(parents=True)
    return path


@pytest.fixture
def linked_root(tmp_path: Path) -> tuple[Path, Path]:
    """A root reached through a symlinked folder, as /var/run/... is through /var/run -> /run.
    Returns (the root through the symlink, the same root resolved)."""
    (tmp_path / "run" / "devinfo" / "cni").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("../run")
    return tmp_path / "var" / "run" / "devinfo", tmp_path / "run" / "devinfo"


def error_of(call, *args) -> type[files.FileError]:
    """Which of files' errors `call` raises: Refused (the path is at fault) or CannotAccess."""
    with pytest.raises(files.FileError) as err:
        call(*args)
    return type(err.value)


# --- inside / require_inside ----------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["", "cni", "cni/x", "cni/new/deeper/x", "cni/../cni/x"])
def test_inside_paths_below_root(root: Path, relative: str) -> None:
    assert files.inside(str(root), os.path.join(str(root), relative))


@pytest.mark.parametrize("path", ["/", "/etc/passwd", "{root}/..", "{root}/../outside/x", "{root}/cni/../../x"])
def test_not_inside_paths_above_or_beside_root(root: Path, path: str) -> None:
    assert not files.inside(str(root), path.format(root=root))


def test_sibling_with_common_prefix_is_not_inside(tmp_path: Path, root: Path) -> None:
    (tmp_path / "root2").mkdir()
    assert not files.inside(str(root), str(tmp_path / "root2" / "x"))


def test_symlink_inside_root_pointing_out_is_not_inside(root: Path, outside: Path) -> None:
    (root / "escape").symlink_to(outside)
    assert not files.inside(str(root), str(root / "escape"))
    assert not files.inside(str(root), str(root / "escape" / "x"))
    assert error_of(files.require_inside, str(root), str(root / "escape" / "x"), "file") is files.Refused


def test_symlink_inside_root_pointing_inside_is_inside(root: Path) -> None:
    (root / "alias").symlink_to(root / "cni")
    assert files.inside(str(root), str(root / "alias" / "x"))
    files.require_inside(str(root), str(root / "alias" / "x"), "file")


def test_dangling_symlink_to_outside_is_not_inside(root: Path, tmp_path: Path) -> None:
    (root / "later").symlink_to(tmp_path / "does-not-exist-yet")
    assert not files.inside(str(root), str(root / "later" / "x"))


def test_root_reached_through_a_symlink(linked_root: tuple[Path, Path]) -> None:
    via_link, resolved = linked_root
    for root in (via_link, resolved):
        for path in (via_link / "cni" / "f", resolved / "cni" / "f"):
            assert files.inside(str(root), str(path))
            files.require_inside(str(root), str(path), "file")


def test_root_through_a_symlink_does_not_let_the_link_target_sibling_in(
    linked_root: tuple[Path, Path], tmp_path: Path
) -> None:
    via_link, _ = linked_root
    assert not files.inside(str(via_link), str(tmp_path / "run" / "other" / "f"))
    assert not files.inside(str(via_link), str(tmp_path / "var" / "run" / "other" / "f"))


def test_require_inside_accepts_a_missing_folder_below_root(root: Path) -> None:
    files.require_inside(str(root), str(root / "cni" / "not" / "yet" / "f"), "file")


@pytest.mark.parametrize("relative", ["cni/f", "f", "./f"])
def test_require_inside_rejects_relative_paths(relative: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    assert error_of(files.require_inside, str(root), relative, "file") is files.Refused


@pytest.mark.parametrize("suffix", ["/cni/..", "/cni/.", "/cni/", "/"])
def test_require_inside_rejects_paths_naming_no_file(root: Path, suffix: str) -> None:
    assert error_of(files.require_inside, str(root), f"{root}{suffix}", "file") is files.Refused


def test_require_inside_rejects_the_root_itself(root: Path) -> None:
    assert error_of(files.require_inside, str(root), str(root), "file") is files.Refused


def test_require_inside_message_names_what_and_root(root: Path, outside: Path) -> None:
    with pytest.raises(files.Refused) as err:
        files.require_inside(str(root), str(outside / "f"), "CNIDeviceInfoFile")
    assert "CNIDeviceInfoFile" in str(err.value)
    assert str(root) in str(err.value)


# --- read_json ------------------------------------------------------------------------------------


def test_read_json_missing_file_is_none(tmp_path: Path) -> None:
    assert files.read_json(str(tmp_path / "nope.json")) is None
    assert files.read_json(str(tmp_path / "no-folder" / "nope.json")) is None


@pytest.mark.parametrize("value", [{"a": [1, 2]}, [], "text", 3, None])
def test_read_json_returns_the_value(tmp_path: Path, value: object) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps(value))
    assert files.read_json(str(path)) == value


@pytest.mark.parametrize("content", [b"", b"{", b"not json", b"\xff\xfe\x00", b"{'a': 1}"])
def test_read_json_not_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(files.NotJson) as err:
        files.read_json(str(path))
    assert str(path) in str(err.value)


def test_read_json_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text('{"a": 1}')
    (tmp_path / "link.json").symlink_to(real)
    assert error_of(files.read_json, str(tmp_path / "link.json")) is files.Refused


def test_read_json_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "link.json").symlink_to(tmp_path / "missing.json")
    assert error_of(files.read_json, str(tmp_path / "link.json")) is files.Refused


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_json_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    before = open_fds()
    assert error_of(files.read_json, str(tmp_path / "d")) is files.Refused
    assert open_fds() == before


def test_read_json_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = open_fds()
    assert error_of(files.read_json, str(fifo)) is files.Refused
    assert open_fds() == before


def test_read_json_under_a_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("{}")
    assert error_of(files.read_json, str(tmp_path / "plain" / "f.json")) is files.CannotAccess


# --- write_json -----------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_write_json_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    files.write_json(str(path), {"b": 1, "a": [1, "x"]}, 0o600)
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, "x"]}
    assert path.read_text().endswith("\n")
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_json_replaces_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text('{"old": true}')
    before = path.stat().st_ino
    with open(path) as old_reader:  # a reader that opened the old file keeps seeing all of it
        files.write_json(str(path), {"new": True}, 0o644)
        assert json.load(old_reader) == {"old": True}
    assert path.stat().st_ino != before
    assert json.loads(path.read_text()) == {"new": True}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", [0o444, 0o600, 0o644, 0o640])
def test_write_json_honours_mode_despite_umask(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "f.json"
    old_umask = os.umask(0o077)
    try:
        files.write_json(str(path), {}, mode)
        first = stat.S_IMODE(path.stat().st_mode)
        files.write_json(str(path), {"again": 1}, mode)  # replacing keeps the mode too
        second = stat.S_IMODE(path.stat().st_mode)
    finally:
        os.umask(old_umask)
    assert (first, second) == (mode, mode)


def test_write_json_replaces_a_stale_temp_file_of_its_own(tmp_path: Path) -> None:
    stale = tmp_path / f".f.json.{os.getpid()}.tmp"
    stale.write_text("half a fi")
    os.chmod(stale, 0o666)
    files.write_json(str(tmp_path / "f.json"), {"a": 1}, 0o600)
    assert leftovers(tmp_path) == []
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o600


def test_write_json_replaces_a_symlink_and_leaves_its_target_alone(tmp_path: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_text("precious")
    (tmp_path / "f.json").symlink_to(victim)
    files.write_json(str(tmp_path / "f.json"), {"a": 1}, 0o600)
    assert not (tmp_path / "f.json").is_symlink()
    assert json.loads((tmp_path / "f.json").read_text()) == {"a": 1}
    assert victim.read_text() == "precious"


def test_write_json_does_not_follow_a_symlink_at_the_temp_name(tmp_path: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_text("precious")
    (tmp_path / f".f.json.{os.getpid()}.tmp").symlink_to(victim)
    assert error_of(files.write_json, str(tmp_path / "f.json"), {"a": 1}, 0o600) is files.CannotAccess
    assert victim.read_text() == "precious"
    assert not (tmp_path / "f.json").exists()


def test_write_json_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f.json").mkdir()
    assert error_of(files.write_json, str(tmp_path / "f.json"), {}, 0o600) is files.Refused
    assert (tmp_path / "f.json").is_dir()
    assert leftovers(tmp_path) == []


def test_write_json_into_a_missing_folder_is_an_io_error(tmp_path: Path) -> None:
    assert error_of(files.write_json, str(tmp_path / "missing" / "f.json"), {}, 0o600) is files.CannotAccess
    assert not (tmp_path / "missing").exists()


def test_write_json_into_a_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores folder permissions, so the read-only file system is simulated at os.open, only
    for paths inside this folder: the first write a read-only folder would refuse."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "f.json").write_text('{"old": true}')
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", read_only_open)
    with pytest.raises(files.CannotAccess) as err:
        files.write_json(str(folder / "f.json"), {"new": True}, 0o600)
    monkeypatch.undo()
    assert "Read-only file system" in str(err.value)
    assert os.listdir(folder) == ["f.json"]
    assert json.loads((folder / "f.json").read_text()) == {"old": True}


def test_write_json_failing_rename_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.json"
    path.write_text('{"old": true}')

    def failing_rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(files.os, "rename", failing_rename)
    with pytest.raises(files.CannotAccess):
        files.write_json(str(path), {"new": True}, 0o600)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["f.json"]
    assert json.loads(path.read_text()) == {"old": True}


# --- remove ---------------------------------------------------------------------------------------


def test_remove_existing_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("{}")
    (tmp_path / "other").write_text("{}")
    assert files.remove(str(tmp_path / "f")) is True
    assert os.listdir(tmp_path) == ["other"]


def test_remove_missing_file_and_missing_folder(tmp_path: Path) -> None:
    assert files.remove(str(tmp_path / "f")) is False
    assert files.remove(str(tmp_path / "no-folder" / "f")) is False


def test_remove_takes_leftover_temp_files_along(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("{}")
    (tmp_path / ".f.123.tmp").write_text("half")
    (tmp_path / ".f.99999.tmp").write_text("half")
    (tmp_path / "f.tmp").write_text("not ours")
    (tmp_path / ".g.123.tmp").write_text("another file's")
    assert files.remove(str(tmp_path / "f")) is True
    assert sorted(os.listdir(tmp_path)) == [".g.123.tmp", "f.tmp"]


def test_remove_takes_leftovers_even_when_the_file_is_gone(tmp_path: Path) -> None:
    (tmp_path / ".f.123.tmp").write_text("half")
    assert files.remove(str(tmp_path / "f")) is False
    assert os.listdir(tmp_path) == []


def test_remove_leaves_the_temp_file_of_a_longer_named_sibling(tmp_path: Path) -> None:
    (tmp_path / "n-abc_net1").write_text("{}")
    sibling_tmp = tmp_path / ".n-abc_net1.100.4242.tmp"  # write_json's temp file for "n-abc_net1.100"
    sibling_tmp.write_text("{}")
    files.remove(str(tmp_path / "n-abc_net1"))
    assert sibling_tmp.exists()


def test_remove_a_symlink_not_its_target(tmp_path: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_text("precious")
    (tmp_path / "f").symlink_to(victim)
    assert files.remove(str(tmp_path / "f")) is True
    assert not os.path.lexists(tmp_path / "f")
    assert victim.read_text() == "precious"


def test_remove_a_symlink_to_a_directory_not_the_directory(tmp_path: Path, outside: Path) -> None:
    (outside / "keep").write_text("x")
    (tmp_path / "f").symlink_to(outside)
    assert files.remove(str(tmp_path / "f")) is True
    assert not os.path.lexists(tmp_path / "f")
    assert (outside / "keep").read_text() == "x"


def test_remove_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").symlink_to(tmp_path / "gone")
    assert files.remove(str(tmp_path / "f")) is True
    assert not os.path.lexists(tmp_path / "f")


def test_remove_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "inner").write_text("x")
    assert error_of(files.remove, str(tmp_path / "f")) is files.CannotAccess
    assert (tmp_path / "f" / "inner").exists()


# --- make_dirs ------------------------------------------------------------------------------------


def test_make_dirs_creates_and_tolerates_existing(tmp_path: Path) -> None:
    files.make_dirs(str(tmp_path / "a" / "b"))
    files.make_dirs(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


def test_make_dirs_over_a_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    assert error_of(files.make_dirs, str(tmp_path / "a" / "b")) is files.CannotAccess
