"""On PYTHONPATH only while the aws tests run bake.py: record its AWS calls (tests/aws/call_recorder.py)."""

import os
import sys

if os.environ.get("BAKERY_TEST_CALL_LOG"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    try:
        from tests.aws.call_recorder import install
    except ImportError:  # a python without botocore (or the repository): nothing of bakery's to record
        pass
    else:
        install()
