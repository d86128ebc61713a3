"""EC2 Image Builder for the aws target: the resources one bake needs (resources) and following its build (wait).

Kept apart from the rest of bakery.aws because only the imagebuilder builder uses them.
"""
