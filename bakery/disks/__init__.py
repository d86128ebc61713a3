"""Bootable disk images: built offline from an image version, byte-identical per version, and booted by verify."""
