"""The aws target: boto3 clients, settings, and the AWS side of builds, releases and clean-up."""
