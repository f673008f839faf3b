"""OpenVNA: an open-source, AI-native vendor-neutral medical image archive."""

__version__ = "0.1.0"
