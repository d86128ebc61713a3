"""Parameters: the values runtime config gives by reference (ssm:/path, secretsmanager:name), stored and read by
bakery (`bake.py param`) and resolved on the instance by the image's runtime-config applier.

names: what a reference and a parameter or secret name may be (the applier re-checks the same). local_store: the
local target's store under .bakery/params/<env>/, mounted read-only into the instances. aws_store: SSM Parameter
Store and Secrets Manager. service: which store an environment uses and the references its runtime config holds.
report: what an instance says it resolved (/run/bakery/params.json), versions only.
"""
