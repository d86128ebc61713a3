"""Ansible plugins bakery passes to the ansible-playbook runs of a local bake."""
