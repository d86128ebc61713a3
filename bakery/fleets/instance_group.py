"""What the rolling refresh needs from a target that does not refresh by itself: instances it can observe,
launch, put behind the load balancer, probe and retire (the local target implements it with podman and HAProxy;
tests with a simulated group)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from bakery.fleets.base import Goal


@dataclass
class Member:
    """One instance of the group, as observed now."""

    name: str
    version: str | None
    config_digest: str | None
    running: bool
    registered: bool  # known to the load balancer
    in_service: bool  # takes new requests
    check_passed: bool  # the load balancer's last health check passed
    check: str  # the load balancer's last check, for messages
    created: float
    address: str | None = None


class InstanceGroup(ABC):
    """The primitives of a target whose refresh bakery runs itself."""

    desired: int
    exclusive: bool = False  # one instance per data volume: retire before launch
    health_path: str = "/health"

    @abstractmethod
    def observe(self) -> list[Member]: ...

    @abstractmethod
    def new_name(self) -> str: ...

    @abstractmethod
    def launch(self, goal: Goal, name: str) -> None:
        """Start an instance of goal; it takes no traffic yet."""

    @abstractmethod
    def register(self, name: str) -> None:
        """Put it behind the load balancer with health checks on and no traffic (idempotent)."""

    @abstractmethod
    def probe(self, name: str) -> tuple[bool, str]:
        """Probe the instance's health check directly: (passed, what it answered)."""

    @abstractmethod
    def enable(self, name: str) -> None:
        """Let it take traffic."""

    @abstractmethod
    def retire(self, name: str, graceful: bool) -> None:
        """Take it out for good. graceful: drain, wait for requests in flight, stop cleanly, remove.
        Otherwise (it never served): out of the load balancer and removed at once."""

    @abstractmethod
    def probe_through_lb(self, requests: int) -> tuple[bool, str]:
        """Send `requests` health checks through the load balancer: (all passed, the first failure)."""
