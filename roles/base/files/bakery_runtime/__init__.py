"""Parameters resolved on the instance for bakery-runtime-config (the script next to this package imports it only
when a delivered runtime config holds references). Runs on Debian 12's /usr/bin/python3; botocore only in aws mode."""
