"""Garbage collection: what `bake.py gc` removes, and why the rest stays.

plan decides for the local target without touching podman (pure); local gathers and carries it out;
aws does both for AMIs and their snapshots; leftovers finds what dead bakes left behind; locks holds every
environment's fleet lock while gc changes anything. Kept light on purpose: importing the package loads none of them.
"""
