"""deviceid-inject: a chained CNI plugin that finds the PCI function behind an attachment,
puts it into the result as pciID and writes the NPWG device-info file."""

__version__ = "0.1.0"
