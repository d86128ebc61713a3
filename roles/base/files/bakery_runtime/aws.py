"""SSM Parameter Store and Secrets Manager through Debian's python3-botocore, as the instance role: credentials
from botocore's own chain (IMDSv2 on EC2; AWS_* variables and AWS_EC2_METADATA_SERVICE_ENDPOINT in tests). Only
GetParameter, GetParametersByPath (a group) and GetSecretValue are called."""

from bakery_runtime.stores import Missing, Unusable

NOT_FOUND = ("ParameterNotFound", "ResourceNotFoundException")


class AwsStore:
    def __init__(self, region, endpoint_url=None):
        try:  # lazily: only aws mode pays for botocore's import (about 0.3 s) or needs it installed
            import botocore.config
            import botocore.exceptions
            import botocore.session
        except ImportError:
            raise Unusable("python3-botocore is not installed in this image (role base installs it)") from None
        self.errors = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        self.client_error = botocore.exceptions.ClientError
        self.session = botocore.session.get_session()
        self.config = botocore.config.Config(connect_timeout=3, read_timeout=10,
                                             retries={"max_attempts": 5, "mode": "standard"})
        self.region, self.endpoint_url, self.clients = region, endpoint_url, {}

    def _client(self, service, region):
        region = region or self.region
        if (service, region) not in self.clients:
            self.clients[service, region] = self.session.create_client(
                service, region_name=region, endpoint_url=self.endpoint_url, config=self.config)
        return self.clients[service, region]

    def _call(self, service, region, operation, **params):
        try:
            if operation == "get_parameters_by_path":
                pages = self._client(service, region).get_paginator(operation).paginate(**params)
                return [p for page in pages for p in page["Parameters"]]
            return getattr(self._client(service, region), operation)(**params)
        except self.client_error as error:
            code = error.response.get("Error", {}).get("Code", "error")
            if code in NOT_FOUND:
                raise Missing(f"{service} has no such {'parameter' if service == 'ssm' else 'secret'} "
                              f"({code})") from None
            message = " ".join(str(error.response.get("Error", {}).get("Message", "")).split())[:300]
            raise Unusable(f"{service} answered {code}: {message}") from None
        except self.errors as error:
            raise Unusable(f"cannot reach {service}: {type(error).__name__}: {' '.join(str(error).split())[:200]}") \
                from None

    def parameter(self, ref):
        found = self._call("ssm", ref.region, "get_parameter", Name=ref.name, WithDecryption=True)["Parameter"]
        return found["Value"], found.get("Version")

    def group(self, ref):
        found = self._call("ssm", ref.region, "get_parameters_by_path", Path=ref.name, Recursive=False,
                           WithDecryption=True)
        if not found:
            raise Missing(f"ssm has no parameter directly under {ref.name}/")
        return sorted((p["Name"], p["Value"], p.get("Version")) for p in found)

    def secret(self, ref):
        found = self._call("secretsmanager", ref.region, "get_secret_value", SecretId=ref.secret_id)
        if "SecretString" not in found:
            raise Unusable("the secret is binary (SecretBinary); runtime config takes a SecretString")
        return found["SecretString"], found.get("VersionId")
