"""libudev's description of a PCI function, through pyudev: for the log and `discover` only.

Discovery always reads plain sysfs (pci.SysfsPci), whatever the log level, so turning
logging on can never change which device is found or how. What libudev adds is words:
the hwdb's vendor and model names beside the driver. So it is asked only where a
description is shown (ADD at log level info and above, the `discover` subcommand), and
when it cannot be loaded (a node without libudev.so.1) the plain sysfs ids stand in.
"""

from __future__ import annotations

from .log import Log
from .pci import Description, SysfsPci


class UdevDescriber:
    """Describes a PCI function from libudev's device object and hwdb properties."""

    def __init__(self) -> None:
        import pyudev

        self._pyudev = pyudev
        self.context = pyudev.Context()

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


def describer(sysfs_root: str | None, log: Log) -> UdevDescriber | SysfsPci:
    """What describes a function: a fixture tree's own files, else libudev on the real host,
    else plain /sys reads when libudev does not load."""
    if sysfs_root:
        return SysfsPci(sysfs_root)
    try:
        return UdevDescriber()
    except (ImportError, OSError) as exc:
        log.debug(f"libudev not usable ({exc}); describing from /sys directly")
        return SysfsPci()
