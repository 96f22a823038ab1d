"""A SecretProviderClass's own rotation interval: the annotation, its bounds, the warning.

`secrets-store.csi.k8s.io/rotation-poll-interval: 10m` on an SPC sets the interval of every
volume mounting it (ticks and the republish throttle alike). The driver's
`--min-rotation-poll-interval` bounds it below, so a namespace's user cannot make the node hammer
Key Vault; an invalid value falls back to `--rotation-poll-interval` and each pod mounting the
class gets one Warning event per value (not one per tick).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from secrets_store_api.goflags import FlagError, parse_duration

from .events import EventSink, PodRef
from .kube import SecretProviderClassSpec, SpcSource
from .schedule import Schedule
from .spcps import PodStatusRecord

log = logging.getLogger(__name__)

INTERVAL_ANNOTATION = "secrets-store.csi.k8s.io/rotation-poll-interval"
DEFAULT_MIN_INTERVAL = 60.0  # --min-rotation-poll-interval: half upstream's default 2m
MAX_INTERVAL = 7 * 24 * 3600.0  # a week: beyond it, a typo (`1000h`) more likely than a wish
INVALID_INTERVAL = "InvalidRotationPollInterval"  # the Warning event's reason
LOOK_EVERY = 5.0  # seconds: how soon a new mount's or an edited class's interval is seen
MAX_ECHO = 64  # characters of the annotation's value quoted back


@dataclass(frozen=True)
class Choice:
    """The interval a class gets (None: the global one) and what to tell its pods."""

    seconds: float | None
    warning: str = ""


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def spc_interval(spc: SecretProviderClassSpec, floor: float) -> Choice:
    """Parse the annotation once; every rule broken names the annotation and the class."""
    value = spc.annotations.get(INTERVAL_ANNOTATION)
    if value is None:
        return Choice(None)
    shown = value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "…"
    where = (
        f'annotation {INTERVAL_ANNOTATION}="{shown}" on secretproviderclass '
        f"{spc.namespace}/{spc.name}"
    )
    try:
        seconds = parse_duration(value) if len(value) <= MAX_ECHO else None
    except FlagError:
        seconds = None
    if seconds is None:
        rule = "not a Go duration (such as 90s, 10m, 1h30m)"
    elif seconds <= 0:
        rule = "must be positive"
    elif seconds > MAX_INTERVAL:
        rule = f"must be at most {seconds_text(MAX_INTERVAL)} (168h)"
    elif seconds < floor:
        return Choice(
            floor,
            f"{where}: below the driver's --min-rotation-poll-interval; "
            f"using {seconds_text(floor)}",
        )
    else:
        return Choice(seconds)
    return Choice(None, f"{where}: {rule}; using --rotation-poll-interval")


class Intervals:
    """Keeps each mounted volume's interval in the schedule as its SPC says."""

    def __init__(
        self,
        schedule: Schedule,
        spcs: SpcSource,
        events: EventSink,
        floor: float,
        clock: Callable[[], float],
    ) -> None:
        self.schedule = schedule
        self.spcs = spcs
        self.events = events
        self.floor = floor
        self.clock = clock

    async def resolve(self, records: Sequence[PodStatusRecord]) -> None:
        """Read each class once (the SPC cache: no API call when watched). A class that
        cannot be read keeps the volume's interval: its tick reports the error."""
        choices: dict[tuple[str, str], tuple[Choice, str | None] | None] = {}
        for record in records:
            key = (record.namespace, record.spc_name)
            if key not in choices:
                choices[key] = await self._choice(*key)
            found = choices[key]
            if found is not None:
                await self._apply(record, *found)

    async def _choice(self, namespace: str, name: str) -> tuple[Choice, str | None] | None:
        try:
            spc = await self.spcs.get(namespace, name)
        except Exception as e:  # KubeError, or a standalone file gone bad
            log.debug("rotation interval: spc %s/%s unreadable: %s", namespace, name, e)
            return None
        return spc_interval(spc, self.floor), spc.annotations.get(INTERVAL_ANNOTATION)

    async def _apply(self, record: PodStatusRecord, choice: Choice, value: str | None) -> None:
        target = record.target_path
        before = self.schedule.interval_of(target)
        self.schedule.set_interval(target, choice.seconds, self.clock())
        state = self.schedule.state(target)
        if value == state.interval_seen:
            return
        state.interval_seen = value
        after = self.schedule.interval_of(target)
        if after != before:
            log.info(
                "rotation: %s/%s spc %s: interval %s",
                record.namespace,
                record.pod_name,
                record.spc_name,
                seconds_text(after),
            )
        if choice.warning:
            log.warning(
                "rotation: pod %s/%s: %s", record.namespace, record.pod_name, choice.warning
            )
            pod = PodRef(record.pod_name, record.namespace, record.pod_uid)
            await self.events.record(pod, "Warning", INVALID_INTERVAL, choice.warning)
