"""dicomstore: a DICOM Storage SCP and SCU (PS3.4 Annex B) with a durable archive."""

__version__ = "0.1.0"
