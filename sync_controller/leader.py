"""One active replica: a coordination.k8s.io Lease, as client-go's leader election keeps it.

A candidate takes the Lease when it is free or when its record has not changed for the lease
duration by the candidate's own clock (no trust in another node's clock); the holder renews
every retry period and gives up (the process exits, as controller-runtime's does) when it
cannot renew within the renew deadline or sees another holder. On shutdown it releases the
Lease so a successor need not wait.

Between renewals the Lease can still be lost (taken over after a stall the renewals did not
see, or by hand): every write is fenced by `confirm`, a fresh read of the holder (shared by
concurrent writers and good for CONFIRM_FOR seconds), so a deposed leader stops before writing.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.resources.coordination_v1 import Lease

from csi_driver.kube import api_error_text, to_dict
from csi_driver.secret_writer import Fenced

log = logging.getLogger(__name__)

LEASE_NAME = "29f1d54e.secret-sync.x-k8s.io"  # the Sync Controller's election id
CONFIRM_FOR = 0.2  # seconds a confirmed holder is trusted for (writes in a burst share a read)


class LeaderLost(Fenced):
    """This process no longer holds the Lease: it stops (exit 1) and writes nothing more."""


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0


def _micro(t: datetime.datetime | None = None) -> str:
    t = t or datetime.datetime.now(datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    def __init__(
        self, client: AsyncClient, namespace: str, identity: str, timing: Timing = Timing()
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.timing = timing
        self._seen: tuple[str, str] = ("", "")  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self._renewed = 0.0  # monotonic time of the last write of our own record
        self._confirmed = -CONFIRM_FOR  # monotonic start of the last read that showed us
        self._confirming: asyncio.Task[str] | None = None

    async def acquire(self) -> None:
        log.info("waiting for lease %s/%s as %s", self.namespace, LEASE_NAME, self.identity)
        while True:
            try:
                if await self._try():
                    break
            except Exception as e:
                log.warning("lease not acquired: %s", api_error_text(e))
            await asyncio.sleep(self.timing.retry)
        log.info("became leader: lease %s/%s", self.namespace, LEASE_NAME)

    async def hold(self) -> None:
        """Renew until lost; raises LeaderLost."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.timing.retry)
            try:
                if await self._try(renew_only=True):
                    last_ok = time.monotonic()
                    continue
                raise LeaderLost(f"lease {self.namespace}/{LEASE_NAME} is held by another")
            except LeaderLost:
                raise
            except Exception as e:
                log.warning("lease renewal failed: %s", api_error_text(e))
            if time.monotonic() - last_ok > self.timing.renew_deadline:
                raise LeaderLost(f"could not renew lease within {self.timing.renew_deadline}s")

    async def confirm(self) -> None:
        """The fence before a write: still the holder, by a read at most CONFIRM_FOR old;
        raises LeaderLost. A read that fails falls back to the renewals: held if renewed
        within the renew deadline."""
        if time.monotonic() - self._confirmed < CONFIRM_FOR:
            return
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._read_holder())
        try:
            holder = await asyncio.shield(self._confirming)
        except Exception as e:
            if time.monotonic() - self._renewed <= self.timing.renew_deadline:
                return
            raise LeaderLost(f"could not confirm lease: {api_error_text(e)}") from None
        if holder != self.identity:
            raise LeaderLost(
                f"lease {self.namespace}/{LEASE_NAME} is held by {holder or 'nobody'}: not writing"
            )

    async def _read_holder(self) -> str:
        started = time.monotonic()
        lease = to_dict(await self.client.get(Lease, LEASE_NAME, namespace=self.namespace))
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        if holder == self.identity:
            self._confirmed = max(self._confirmed, started)
        return holder

    async def release(self) -> None:
        try:
            lease = to_dict(await self.client.get(Lease, LEASE_NAME, namespace=self.namespace))
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.client.replace(cast(Lease, Lease.from_dict(lease)))
        except Exception as e:
            log.warning("could not release the lease: %s", api_error_text(e))

    async def _try(self, renew_only: bool = False) -> bool:
        try:
            lease = to_dict(await self.client.get(Lease, LEASE_NAME, namespace=self.namespace))
        except ApiError as e:
            if e.status.code != 404 or renew_only:
                raise
            return await self._create()
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        now = time.monotonic()
        if record != self._seen:
            self._seen, self._seen_at = record, now
        if holder != self.identity:
            if renew_only:
                return False
            duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
            if holder and now - self._seen_at < duration:
                return False
        return await self._write(lease, spec, holder)

    async def _write(self, lease: dict[str, Any], spec: dict[str, Any], holder: str) -> bool:
        stamp = _micro()
        new = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timing.duration),
            "renewTime": stamp,
        }
        if holder != self.identity:
            new["acquireTime"] = stamp
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        lease["spec"] = new
        try:
            await self.client.replace(cast(Lease, Lease.from_dict(lease)))
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        self._seen, self._seen_at = (self.identity, stamp), time.monotonic()
        self._renewed = self._seen_at
        return True

    async def _create(self) -> bool:
        stamp = _micro()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.timing.duration),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            await self.client.create(cast(Lease, Lease.from_dict(body)))
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        self._renewed = time.monotonic()
        return True
