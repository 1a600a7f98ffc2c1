"""An Optuna study in a shared database (``--storage``), so that a study can be driven, stopped
and resumed from any machine that reaches the database.

By default the study lives in the run directory's SQLite file (:func:`search.study.rundir.storage`),
which only its machine can open. ``--storage postgresql://user@db-host/optuna`` (any URL
SQLAlchemy and :class:`optuna.storages.RDBStorage` accept) puts it in a database instead:

- :func:`open_storage` opens it (``postgresql://`` is given the installed driver,
  :func:`search.tracking.uris.database_url`); :func:`check_storage` proves it answers within
  seconds, before anything starts.
- The study carries what a resume on another machine needs, as the user attribute
  :data:`RUN_ATTR` (space hash and path, tracking URI, MLflow parent run; :func:`publish_run`,
  :func:`read_run`): ``--resume --storage URL --output <new folder>`` on a second machine rebuilds
  its run directory from it.
- **One driver per study, across machines, as far as the database allows** (:class:`DriverClaim`):
  a driver writes a heartbeat into the study (user attribute :data:`DRIVER_ATTR`: host, PID, run
  directory, a random token and the time of its last beat, every :data:`HEARTBEAT_S` seconds).
  A second driver that finds a heartbeat younger than :data:`STALE_AFTER_S` is refused, naming
  the first. Guaranteed: a driver never marks a live driver's running trials as interrupted
  while its heartbeat is fresh, and a driver killed with ``kill -9`` blocks the study for at
  most :data:`STALE_AFTER_S` seconds. Not guaranteed: Optuna's storage API has no
  compare-and-set, so two drivers that start within the same instant could both write their
  claim; each re-reads its claim after :data:`SETTLE_S` seconds and the one whose token was
  overwritten backs off, which closes that window unless a write takes longer than the settle
  time. Freshness compares the writer's clock with the reader's: keep the machines' clocks in
  sync (NTP); a clock skew larger than :data:`STALE_AFTER_S` defeats it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from pptp.errors import ConfigError
from search.tracking.uris import check_tracking, database_url, redact

logger = logging.getLogger(__name__)

#: the study's user attribute holding what a resume on another machine needs
RUN_ATTR = "pptp.run"
#: the study's user attribute holding the live driver's heartbeat
DRIVER_ATTR = "pptp.driver"
#: seconds between two heartbeats; a heartbeat older than STALE_AFTER_S is a dead driver's
HEARTBEAT_S = float(os.environ.get("PPTP_DRIVER_HEARTBEAT_S", "15"))
STALE_AFTER_S = 4 * HEARTBEAT_S
#: seconds a new claim waits before it re-reads the study to see whether another driver won
SETTLE_S = 1.0


class StudyBusy(ConfigError):
    """Another driver's heartbeat in the shared study is fresh: one driver per study."""


@functools.cache
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDBStorage on ``url`` (one per URL and process: each holds a connection pool).

    Server databases get ``pool_pre_ping`` (a connection the server dropped is replaced, not
    failed) and a 10 s connect timeout.
    """
    resolved = database_url(url)
    kwargs: dict[str, Any] = {}
    if not resolved.startswith("sqlite"):
        kwargs = {"pool_pre_ping": True}
        if resolved.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(resolved, engine_kwargs=kwargs)
    except Exception as error:
        raise ConfigError(
            f"--storage {redact(url)}: cannot open the Optuna storage ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); check the URL, "
            "the database and its credentials (~/.pgpass or PGPASSWORD keep passwords out of URLs)"
        ) from None


def check_storage(url: str) -> None:
    """Raise a :class:`~pptp.errors.ConfigError` within seconds unless ``url`` can hold a study:
    a supported scheme, a driver installed, the server reachable, the database openable."""
    scheme = url.partition("://")[0].lower()
    if not scheme or scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise ConfigError(
            f"--storage {redact(url)}: expected a database URL, e.g. "
            "postgresql://user@db-host:5432/optuna or sqlite:////shared/optuna.db"
        )
    if not scheme.startswith("sqlite"):
        try:
            check_tracking(url, timeout_s=5.0)  # the driver, then a TCP connection
        except ConfigError as error:
            raise ConfigError(f"--storage: {error}") from None
    open_storage(url)


def has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class SharedRun:
    """What the study records about its run, for a driver on another machine (:data:`RUN_ATTR`)."""

    space_sha256: str
    space_path: str
    tracking_uri: str
    parent_run_id: str | None
    experiment_id: str | None


def publish_run(study: optuna.Study, run: SharedRun) -> None:
    study.set_user_attr(RUN_ATTR, json.dumps(asdict(run)))


def read_run(study: optuna.Study) -> SharedRun | None:
    raw = study.user_attrs.get(RUN_ATTR)
    if not raw:
        return None
    try:
        return SharedRun(**json.loads(raw))
    except (TypeError, ValueError):
        return None


class DriverClaim:
    """The driver's heartbeat in a shared study (see the module's docstring for what it does and
    does not guarantee). :meth:`acquire` refuses a fresh heartbeat of another driver
    (:class:`StudyBusy`); a daemon thread then beats every ``interval_s`` seconds until
    :meth:`release` marks the study free."""

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        run_dir: Path,
        *,
        interval_s: float = HEARTBEAT_S,
        stale_after_s: float | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.url, self.study_name, self.run_dir = storage_url, study_name, run_dir
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else 4 * interval_s
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=open_storage(self.url))

    def _mine(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "token": self.token,
            "beat": time.time(),
        }

    def holder(self) -> dict[str, Any] | None:
        """The other driver whose heartbeat is fresh, or None."""
        raw = self._study().user_attrs.get(DRIVER_ATTR)
        try:
            held = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(held, dict) or held.get("released") or held.get("token") == self.token:
            return None
        age = time.time() - float(held.get("beat", 0))
        return {**held, "age": age} if age < self.stale_after_s else None

    def acquire(self) -> None:
        self._refuse(self.holder())
        study = self._study()
        study.set_user_attr(DRIVER_ATTR, json.dumps(self._mine()))
        time.sleep(self.settle_s)
        raw = self._study().user_attrs.get(DRIVER_ATTR) or "{}"
        if json.loads(raw).get("token") != self.token:
            self._refuse({**json.loads(raw), "age": 0.0})
        self._thread = threading.Thread(target=self._beat, name="pptp-driver-heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def _refuse(self, held: dict[str, Any] | None) -> None:
        if held is None:
            return
        wait = max(self.stale_after_s - held["age"], 0)
        raise StudyBusy(
            f"study {self.study_name!r} in {redact(self.url)} is driven by PID {held.get('pid')} "
            f"on {held.get('host')} (run dir {held.get('run_dir')}; last heartbeat "
            f"{held['age']:.0f} s ago): one driver per study. Wait for it to end; if it died, "
            f"its claim expires within {wait:.0f} s"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._study().set_user_attr(DRIVER_ATTR, json.dumps(self._mine()))
            except Exception as error:  # the next beat retries; the study goes on
                logger.warning("driver heartbeat to %s failed (%s)", redact(self.url), error)

    def release(self) -> None:
        """Stop beating and mark the study free (a dead driver's claim simply goes stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        with contextlib.suppress(Exception):
            study = self._study()
            raw = study.user_attrs.get(DRIVER_ATTR) or "{}"
            if json.loads(raw).get("token") == self.token:
                study.set_user_attr(DRIVER_ATTR, json.dumps({**self._mine(), "released": True}))
