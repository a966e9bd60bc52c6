"""The CNI commands: ADD, DEL, CHECK, GC, STATUS and VERSION, each reading top to bottom.

`run` is the whole plugin invocation: environment and stdin in, one JSON object
(or nothing) out on stdout, logs on stderr and the log file.
"""

from __future__ import annotations

import os

from . import config as configuration
from . import deviceinfo, discovery, files, protocol, udev, vftable
from .config import Config
from .log import Log
from .pci import SysfsPci
from .protocol import ERR_CHECK_FAILED, ERR_INTERNAL, ERR_INVALID_CONFIG, ERR_IO, ERR_NO_DEVICE, CniError, Env
from .state import Busy, Record, Store

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, TextIO

    Command = Callable[[Env, Config, Log], "dict[str, Any] | None"]
    Admit = Callable[["dict[str, Any]"], None]


class Declined(Exception):
    """Raised by `run`'s admit hook: this process will not serve the call, and nothing was done.
    The CNI server's way to hand a call back to its client (not a CNI error: nobody failed)."""


def cmd_add(env: Env, config: Config, log: Log) -> dict[str, Any]:
    result = _prev_result(config)
    iface = pick_interface(result, env.ifname)
    host = _host(config, env)
    found = discovery.discover(_clues(config, iface, env.ifname), host)
    if log.enabled("debug"):
        for attempt in found.attempts:
            log.debug(f"{attempt.strategy}: {attempt.outcome}")
    store = Store(config.data_dir)
    if found.device is None:
        if config.required:
            raise CniError(
                ERR_NO_DEVICE,
                f"no PCI function found for {env.ifname}: {found.explain()}. What would have helped: a "
                "netdev in the pod on a PCI function, the VF's mac in prevResult (DPDK), or its address as "
                "deviceID (a device plugin, or the config)",
            )
        log.warning(f"no PCI function found, passing prevResult through (required: false): {found.explain()}")
        with store.locked():
            store.save(_record(env, config, None, None, created=False))
        return result
    device = found.device
    if log.enabled("info"):  # describing the function asks libudev's hwdb: only when it is logged
        log.info(f"{env.ifname} is {device.pci_address} (by {device.strategy}); {_describe(config, device, log)}")
    target = deviceinfo.target(
        config.device_info_root, config.runtime_device_info_file, config.name, env.container_id, env.ifname
    )
    with store.locked():
        previous = store.load(env.container_id, env.ifname)
        ours_already = previous is not None and previous.created_file and previous.device_info_file == target
        created = ours_already or not os.path.lexists(target)
        document = deviceinfo.compose(config.device_info_root, target, device, log)
        # The record goes first, so a DEL after a crash knows of the file it may find.
        store.save(_record(env, config, device, target, created, document))
        try:
            deviceinfo.write(target, document)
        except Exception:  # nothing half done: the record goes back to what it was
            store.restore(env.container_id, env.ifname, previous)
            raise
    if iface is None:
        log.warning(f"prevResult has no interface for {env.ifname}; pciID goes only into {target}")
    else:
        iface["pciID"] = device.pci_address
    return result


def cmd_del(env: Env, config: Config, log: Log) -> None:
    store = Store(config.data_dir)
    with store.locked():
        record = store.load(env.container_id, env.ifname)
        if record is None:
            # No record (lost, or ADD never got that far): our own documented file may still be there.
            path = deviceinfo.target(config.device_info_root, None, config.name, env.container_id, env.ifname)
            record = _record(env, config, None, path, created=True)
        _clean_up(record, config, store, log)


def cmd_check(env: Env, config: Config, log: Log) -> None:
    result = _prev_result(config)
    record = Store(config.data_dir).load(env.container_id, env.ifname)
    if record is None:
        raise CniError(ERR_CHECK_FAILED, f"no record of an ADD for {env.container_id}/{env.ifname}")
    if record.pci_address is None:
        if config.required:
            raise CniError(ERR_CHECK_FAILED, f"ADD found no PCI function for {env.ifname}")
        return
    iface = pick_interface(result, env.ifname)
    if iface is not None and iface.get("pciID") not in (None, record.pci_address):
        raise CniError(ERR_CHECK_FAILED, f"prevResult gives pciID {iface['pciID']}, ADD recorded {record.pci_address}")
    # Look again, without trusting the pciID we put into the result ourselves.
    strategies = [(name, find) for name, find in discovery.STRATEGIES if find is not discovery.from_result]
    found = discovery.discover(_clues(config, iface, env.ifname), _host(config, env), strategies)
    if found.device is None:
        raise CniError(ERR_CHECK_FAILED, f"{env.ifname}'s PCI function is gone: {found.explain()}")
    if found.device.pci_address != record.pci_address:
        raise CniError(
            ERR_CHECK_FAILED,
            f"{env.ifname} is now {found.device.pci_address}, ADD recorded {record.pci_address}",
        )
    if record.device_info_file:
        named = deviceinfo.read_address(record.device_info_file)
        if named != record.pci_address:
            what = "is gone" if not os.path.lexists(record.device_info_file) else f"names {named}"
            raise CniError(ERR_CHECK_FAILED, f"device-info file {record.device_info_file} {what}")


def cmd_gc(env: Env, config: Config, log: Log) -> None:
    if config.valid_attachments is None:
        log.warning("GC without cni.dev/valid-attachments: nothing is removed")
        return
    valid = {(a.container_id, a.ifname) for a in config.valid_attachments}
    store = Store(config.data_dir)
    with store.locked():
        for container_id, ifname in store.attachments():
            if (container_id, ifname) in valid:
                continue
            record = store.load(container_id, ifname)
            log.info(f"GC: {container_id}/{ifname} is not a valid attachment any more")
            if record is None:  # unreadable: only the record itself can go
                store.forget(container_id, ifname)
            else:
                _clean_up(record, config, store, log)


def cmd_status(env: Env, config: Config, log: Log) -> None:
    pci_devices = SysfsPci(config.sysfs_root).devices
    if not os.access(pci_devices, os.R_OK | os.X_OK):
        raise CniError(protocol.ERR_PLUGIN_NOT_AVAILABLE, f"cannot read {pci_devices}")
    for key, folder in (("deviceInfoRoot", config.device_info_root), ("dataDir", config.data_dir)):
        if not _writable(folder):
            raise CniError(protocol.ERR_PLUGIN_NOT_AVAILABLE, f"{key} {folder} is not writable")


def version_info(raw: Mapping[str, Any]) -> dict[str, Any]:
    asked = raw.get("cniVersion")
    return {
        "cniVersion": asked if isinstance(asked, str) and asked else protocol.LATEST_VERSION,
        "supportedVersions": list(protocol.SUPPORTED_VERSIONS),
    }


def _lenient_config(stdin: BinaryIO) -> dict[str, Any]:
    """VERSION answers whatever it is sent: the input only chooses the echoed cniVersion."""
    try:
        return protocol.read_config(stdin)
    except CniError:
        return {}


def pick_interface(result: dict[str, Any], ifname: str) -> dict[str, Any] | None:
    """The prevResult interface this attachment is about, by these rules in order:
    the one named CNI_IFNAME with a sandbox; the one named CNI_IFNAME; the only one with a
    sandbox. None when no rule picks one (the address then goes only into the file)."""
    interfaces = result.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(i, dict) for i in interfaces):
        raise CniError(ERR_INVALID_CONFIG, "prevResult.interfaces must be a list of objects")
    named = [i for i in interfaces if i.get("name") == ifname]
    in_sandbox = [i for i in interfaces if i.get("sandbox")]
    for candidates in ([i for i in named if i.get("sandbox")], named):
        if candidates:
            return candidates[0]
    return in_sandbox[0] if len(in_sandbox) == 1 else None


def _prev_result(config: Config) -> dict[str, Any]:
    if config.prev_result is None:
        raise CniError(
            ERR_INVALID_CONFIG,
            "prevResult is missing: deviceid-inject is a chained plugin and must follow the plugin "
            "that creates the interface (akshci-iov, sriov, host-device, ...)",
        )
    return protocol.convert_result(config.prev_result, config.cni_version)


def _clues(config: Config, iface: dict[str, Any] | None, ifname: str) -> discovery.Clues:
    iface = iface or {}
    name = iface.get("name")
    mac = iface.get("mac")
    pci_id = iface.get("pciID")
    return discovery.Clues(
        ifname=name if isinstance(name, str) and name else ifname,
        mac=mac if isinstance(mac, str) and mac else None,
        result_pci_id=pci_id if isinstance(pci_id, str) else None,
        runtime_device_id=config.runtime_device_id,
        config_device_id=config.device_id,
    )


def _host(config: Config, env: Env) -> discovery.Host:
    # Discovery reads plain sysfs (Host's default view) at every log level; libudev only describes.
    return discovery.Host(
        netns_path=env.netns,
        sysfs_root=config.sysfs_root,
        pf_names=config.pf_names,
        vhost_net=discovery.VHOST_NET if config.vhost_net else None,
    )


def _describe(config: Config, device: discovery.Device, log: Log) -> str:
    """The driver and ids of the found function, for the log line that shows them. libudev's hwdb
    names them on a real host; loading it (pyudev runs `ldconfig -p`) costs more than the rest of
    ADD, hence only here, behind log.enabled("info")."""
    d = udev.describer(config.sysfs_root, log).describe(device.pci_address)
    return f"driver {d.driver or '-'}, vendor {d.vendor or '-'}, device {d.device or '-'}"


def _record(
    env: Env,
    config: Config,
    device: discovery.Device | None,
    path: str | None,
    created: bool,
    document: dict[str, Any] | None = None,
) -> Record:
    return Record(
        container_id=env.container_id,
        ifname=env.ifname,
        network=config.name,
        pci_address=device.pci_address if device else None,
        strategy=device.strategy if device else None,
        device_info_file=path,
        created_file=created,
        pod_namespace=env.args.get("K8S_POD_NAMESPACE") or None,
        pod_name=env.args.get("K8S_POD_NAME") or None,
        pod_uid=env.args.get("K8S_POD_UID") or None,
        device_info=document,
    )


def _clean_up(record: Record, config: Config, store: Store, log: Log) -> None:
    """Remove the device-info file we created (never one Multus or a device plugin made), then the record."""
    path = record.device_info_file
    if path and record.created_file:
        if files.inside(config.device_info_root, os.path.dirname(path)):
            if files.remove(path):
                log.info(f"removed {path}")
        else:
            log.warning(f"{path} now resolves outside {config.device_info_root}; left alone")
    store.forget(record.container_id, record.ifname)


def _writable(folder: str) -> bool:
    """Whether `folder` is writable, or could be created: its nearest existing ancestor is."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


# The handler of each command but VERSION, which needs no config (protocol.COMMANDS: every name).
HANDLERS: dict[str, Command] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "GC": cmd_gc,
    "STATUS": cmd_status,
}


def run(environ: Mapping[str, str], stdin: BinaryIO, stdout: TextIO, stderr: TextIO, admit: Admit | None = None) -> int:
    """One plugin invocation. Returns the exit code; every failure is one CNI error on stdout.
    `admit`, given the decoded config before anything reads or writes a file, may raise Declined."""
    log = Log(stream=stderr)
    cni_version = protocol.LATEST_VERSION
    try:
        env = protocol.parse_env(environ)
        if env.command == "VERSION":
            protocol.write_json(stdout, version_info(_lenient_config(stdin)))
            return 0
        raw = protocol.read_config(stdin)
        if admit is not None:
            admit(raw)
        if raw.get("cniVersion") in protocol.SUPPORTED_VERSIONS:
            cni_version = raw["cniVersion"]
        protocol.require_version(raw.get("cniVersion"), env.command)
        config = configuration.load(raw)
        log = Log(config.log_level, stream=stderr)
        if config.log_file:
            log.open_file(config.log_file)
        log.context = f"{env.command} {env.container_id}/{env.ifname}: " if env.container_id else f"{env.command}: "
        result = HANDLERS[env.command](env, config, log)
        if result is not None:
            protocol.write_json(stdout, result)
        return 0
    except Declined:
        raise
    except Exception as exc:  # every failure, a bug of ours too, is one error object: never a traceback
        err = as_cni_error(exc)
        log.error(f"{err.msg} (code {err.code})")
        protocol.write_json(stdout, err.to_json(cni_version))
        return 1
    finally:
        log.close()


def as_cni_error(exc: Exception) -> CniError:
    """The one place the errors of the modules below become protocol errors, each with its code."""
    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, files.Refused):  # a path from the config or the runtime it will not use
        return CniError(ERR_INVALID_CONFIG, str(exc))
    if isinstance(exc, files.CannotAccess):
        return CniError(ERR_IO, str(exc))
    if isinstance(exc, Busy):
        return CniError(protocol.ERR_TRY_AGAIN, str(exc))
    if isinstance(exc, vftable.Ambiguous):
        return CniError(protocol.ERR_AMBIGUOUS_MAC, str(exc))
    if isinstance(exc, OSError):
        return CniError(ERR_IO, f"I/O error: {exc}")
    return CniError(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
