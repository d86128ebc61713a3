"""Verification: an image version proves itself before it may be deployed.

runner boots the image on throwaway instances and runs its checks; secrets scans what the bake added;
packages lists what it installed; junit writes the report; gate is what deploy and promote ask.
Kept light on purpose: importing the package loads none of them.
"""
