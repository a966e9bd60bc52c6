"""The PCI tree as libudev sees it, through pyudev: the view used on a real host.

Same questions as pci.SysfsPci, answered from libudev's device objects where it
knows more (the parent chain, the driver, the hwdb names); the SR-IOV links it
has no API for are read from the sysfs folder libudev reports. When libudev
cannot be loaded (a node without libudev.so.1), `real_host_pci` falls back to
plain sysfs reads, so discovery has one code path and two views.
"""

from __future__ import annotations

from .log import Log
from .pci import Description, SysfsPci


class UdevPci(SysfsPci):
    def __init__(self) -> None:
        import pyudev

        self._pyudev = pyudev
        self.context = pyudev.Context()
        super().__init__(self.context.sys_path)

    def pci_parent(self, device_path: str) -> str | None:
        try:
            device = self._pyudev.Devices.from_sys_path(self.context, device_path)
        except self._pyudev.DeviceNotFoundError:
            return None
        pci = device if device.subsystem == "pci" else device.find_parent("pci")
        return pci.sys_name if pci is not None else None

    def describe(self, address: str) -> Description:
        try:
            device = self._pyudev.Devices.from_name(self.context, "pci", address)
        except self._pyudev.DeviceNotFoundError:
            return Description(None, None, None)
        props = device.properties
        vendor, _, model = (props.get("PCI_ID") or ":").partition(":")
        return Description(
            driver=device.driver,
            vendor=props.get("ID_VENDOR_FROM_DATABASE") or (f"0x{vendor.lower()}" if vendor else None),
            device=props.get("ID_MODEL_FROM_DATABASE") or (f"0x{model.lower()}" if model else None),
        )


def pci_view(sysfs_root: str | None, log: Log, use_libudev: bool) -> SysfsPci:
    """The view discovery reads: a fixture tree as files; a real host through libudev when the
    caller wants what it adds, else /sys directly."""
    if sysfs_root:
        return SysfsPci(sysfs_root)
    return real_host_pci(log) if use_libudev else SysfsPci("/sys")


def real_host_pci(log: Log) -> SysfsPci:
    """libudev's view of /sys when it loads, plain /sys reads when it does not."""
    try:
        return UdevPci()
    except (ImportError, OSError) as exc:
        log.debug(f"libudev not usable ({exc}); reading /sys directly")
        return SysfsPci("/sys")
