"""Seeing inside a fleet without signing in: merged journals (`bake.py logs`) and per-process numbers (`bake.py top`).

Immutable servers deny terminal access, so everything an operator would have
looked at on the box is read from outside: locally through podman (journald and
systemd inside each instance), on AWS through CloudWatch Logs and the metrics the
CloudWatch agent's procstat plugin publishes (role cloudwatch_agent).
"""
