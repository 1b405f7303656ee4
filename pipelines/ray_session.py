"""Start, join or reuse Ray for one run; a cluster that can not be joined is one line that says what to do.

``ray_session`` does what ``pipelines.ray_images._ray_session`` did (start and stop a local instance when no
address is given, join a cluster otherwise with a few environment variables forwarded to the workers, reuse a
Ray that this process already initialised) and checks a cluster before joining it:

* nothing listens at the address: :class:`RayClusterUnreachableError` at once (``ray.init`` would retry for
  minutes);
* the cluster refuses this process's token (Ray's token authentication, ``InvalidAuthToken``; ``ray start
  --head`` turns it on when ``RAY_AUTH_MODE=token`` or when it finds a token, e.g. the ``~/.ray/auth_token``
  that any local ``ray.init()`` creates), or token mode is on here without a token:
  :class:`RayAuthError` at once (``ray.init`` would wait ~20 s and then say only "Failed to connect").

Both are :class:`annotator.errors.ConfigError`, so the CLI prints them as one line and exits 2. See
``docs/cluster.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from annotator.errors import ConfigError
from annotator.interrupt import Interrupted, active_handler, reinstall_handler, request_stop

__all__ = ["DEFAULT_FORWARDED_ENV", "RayAuthError", "RayClusterUnreachableError", "ray_session"]

#: what ``pipelines.ray_images`` forwards today (``_FORWARDED_ENV``)
DEFAULT_FORWARDED_ENV = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "ANNOTATOR_WEIGHTS_DIR")

#: seconds to wait for a TCP connection to the cluster's GCS port, then for the GCS to answer
CONNECT_TIMEOUT_S = 5.0
GCS_PROBE_TIMEOUT_MS = 8000

_DOC = "see docs/cluster.md"
_AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "UNAUTHENTICATED", "authentication token")


class RayAuthError(ConfigError):
    """The Ray cluster refused this process: token authentication is on there and this process has no token,
    or another one (or token mode is on here and no token can be found)."""


class RayClusterUnreachableError(ConfigError):
    """No Ray cluster answers at the address given (nothing listens, or what listens is not a Ray GCS)."""


@contextlib.contextmanager
def ray_session(
    address: str | None,
    *,
    num_cpus: int | None = None,
    runtime_env: dict | None = None,
    quiet: bool = True,
    forwarded_env: tuple[str, ...] = DEFAULT_FORWARDED_ENV,
) -> Iterator[Any]:
    """Yield the ``ray`` module, initialised.

    Args:
        address: ``None`` starts a local instance (``num_cpus``, no dashboard) and shuts it down afterwards;
            otherwise the cluster to join (``auto``, ``host:port`` of the head's GCS, or ``ray://host:10001``),
            left running afterwards (only this driver disconnects).
        num_cpus: CPUs of the local instance (ignored when joining).
        runtime_env: Ray runtime environment of this job.
        quiet: do not print the workers' output on the driver.
        forwarded_env: names of environment variables copied from this process to the workers when joining a
            cluster (the workers of a local instance inherit this process's environment anyway).

    Raises:
        RayAuthError: the cluster refused this process's token (or token mode is on here without a token).
        RayClusterUnreachableError: no Ray cluster answers at ``address``.

    A Ray already initialised in this process is reused as it is (and not shut down).
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    env_runtime = dict(runtime_env or {})
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    else:
        kwargs["address"] = address
        env = {k: os.environ[k] for k in forwarded_env if k in os.environ}
        if env:
            env_runtime["env_vars"] = {**env, **env_runtime.get("env_vars", {})}
        _check_cluster(address)
    if env_runtime:
        kwargs["runtime_env"] = env_runtime
    if address is None:
        _init(ray, kwargs)
    else:
        try:
            _init(ray, kwargs)
        except Exception as e:  # the checks above passed, yet Ray could not join (a race, an odd setup)
            with contextlib.suppress(Exception):
                ray.shutdown()
            error = _join_error(address, e)
            if error is None:
                raise
            raise error from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _init(ray, kwargs: dict) -> None:
    """``ray.init``, then the run's own SIGINT / SIGTERM handler back in place (:mod:`annotator.interrupt`).

    ``ray.init`` installs Ray's SIGTERM handlers in this process (Python ones that exit 15 or 1, and its core
    worker's C one that aborts, exit 134). Put back after it, ours ends a Ray run as it ends a local one: one
    line, exit 143. A SIGTERM that lands inside ``ray.init`` meets Ray's Python handler: its ``SystemExit``
    becomes the same stop (when a run's handler is active, i.e. under the CLI; a library caller gets Ray's).
    """
    try:
        ray.init(**kwargs)
    except SystemExit as e:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if active_handler() is None or e.code not in (signal.SIGTERM, 1):
            raise
        request_stop("SIGTERM")
        raise Interrupted("SIGTERM") from None
    finally:
        reinstall_handler()


# ------------------------------------------------------------------------------------------ checks


def _check_cluster(address: str) -> None:
    """Raise a one-line error now if ``ray.init(address=...)`` would fail for want of a cluster or a token."""
    from ray.exceptions import AuthenticationError

    if address.startswith("ray://"):  # Ray Client: its server (port 10001) is checked by ray.init itself
        try:
            from ray._private.utils import get_ray_client_dependency_error

            missing = get_ray_client_dependency_error()
        except Exception:
            missing = None
        if missing:
            raise ConfigError(
                f"--address {address} uses Ray Client, which this Ray can not run ({missing}): "
                "pip install 'ray[client]' here and on the head, or run on a node of the cluster with the head's "
                f"host:port or auto ({_DOC})"
            )
        return
    try:
        from ray._private.authentication import authentication_token_setup as tokens
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without token authentication (before 2.52): nothing to check here
        return
    if address == "auto":
        # ray.init turns token mode on for a cluster it finds by itself when a token exists here: do the same
        tokens.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        gcs = canonicalize_bootstrap_address("auto")
        if gcs is None:
            raise RayClusterUnreachableError(
                "--address auto found no running Ray cluster (no RAY_ADDRESS, no `ray start` on this machine in "
                f"the default temp dir): start one with `ray start --head` or pass its host:port ({_DOC})"
            )
    else:
        try:
            gcs = canonicalize_bootstrap_address(address)
        except ValueError as e:
            raise ConfigError(f"--address {address!r}: {e}; use auto, host:port or ray://host:10001") from None
        if gcs is None:  # "local": ray.init starts a local instance
            return
    host, _, port = gcs.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise RayClusterUnreachableError(
            f"no Ray cluster answers at {_where(address, gcs)} ({reason}): start the head there with "
            f"`ray start --head --port={port}`, or fix --address (the head's host:port, or auto on a node of "
            f"the cluster; {_DOC})"
        ) from None
    try:
        tokens.ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:
        raise RayAuthError(
            f"RAY_AUTH_MODE=token here but this process has no Ray token ({_token_sources()}), so it can not "
            f"join the cluster at {_where(address, gcs)}: give it the head's token (RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head prints it) ({_DOC})"
        ) from None
    _probe_gcs(address, gcs)


def _probe_gcs(address: str, gcs: str) -> None:
    """Ask the GCS for the cluster id, as ``ray.init`` does first, but once and with a timeout."""
    from ray.exceptions import AuthenticationError, RpcError

    try:
        from ray._raylet import InnerGcsClient
    except ImportError:
        return
    try:
        InnerGcsClient.standalone(gcs, None, GCS_PROBE_TIMEOUT_MS)
    except AuthenticationError as e:
        raise _auth_error(address, gcs, e) from None
    except RpcError as e:
        if any(m in str(e) for m in _AUTH_MARKERS):
            raise _auth_error(address, gcs, e) from None
        if "Timed out" in str(e):
            raise RayClusterUnreachableError(
                f"something listens at {_where(address, gcs)} but no Ray cluster answered there within "
                f"{GCS_PROBE_TIMEOUT_MS // 1000} s: check the port (the head's `ray start --port`, default "
                f"6379; {_DOC})"
            ) from None
    except Exception:  # an API change or an odd answer: leave the verdict to ray.init
        return


def _join_error(address: str, e: BaseException) -> Exception | None:
    """The one-line error for a failed ``ray.init(address=...)``, or None when it is none of ours."""
    from ray.exceptions import AuthenticationError

    chain = []
    seen: BaseException | None = e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(x, AuthenticationError) for x in chain) or any(m in str(x) for x in chain for m in _AUTH_MARKERS):
        return _auth_error(address, None, e)
    if isinstance(e, ConnectionError):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return RayClusterUnreachableError(
            f"could not join the Ray cluster at {address}: {first} (check that the head is up, `ray status` "
            f"on it, and that this machine reaches its ports; {_DOC})"
        )
    return None


def _auth_error(address: str, gcs: str | None, e: BaseException) -> RayAuthError:
    mode = _auth_mode()
    if mode != "token":
        what = f"this process sends no token (RAY_AUTH_MODE is {mode!r} here)"
    else:
        what = f"the token this process sends ({_token_sources()}) is not the cluster's"
    return RayAuthError(
        f"the Ray cluster at {_where(address, gcs)} refused this process (InvalidAuthToken: token authentication "
        f"is on there and {what}): run with RAY_AUTH_MODE=token and the head's token (RAY_AUTH_TOKEN, "
        f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head prints it), as on every "
        f"node ({_DOC})"
    )


def _auth_mode() -> str:
    try:
        from ray._private.authentication.authentication_utils import get_authentication_mode_name
        from ray._raylet import get_authentication_mode

        return get_authentication_mode_name(get_authentication_mode())
    except Exception:
        return os.environ.get("RAY_AUTH_MODE", "disabled") or "disabled"


def _token_sources() -> str:
    """Where a token could come from here, in Ray's order: names only, never the token."""
    found = []
    if os.environ.get("RAY_AUTH_TOKEN"):
        found.append("RAY_AUTH_TOKEN is set")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        found.append(f"RAY_AUTH_TOKEN_PATH={path}" + ("" if _nonempty(Path(path)) else " (missing or empty)"))
    default = Path.home() / ".ray" / "auth_token"
    if _nonempty(default):
        found.append(f"{default} exists")
    return "; ".join(found) if found else "no RAY_AUTH_TOKEN, no RAY_AUTH_TOKEN_PATH, no ~/.ray/auth_token"


def _nonempty(p: Path) -> bool:
    try:
        return p.is_file() and p.stat().st_size > 0
    except OSError:
        return False


def _where(address: str, gcs: str | None) -> str:
    return address if gcs is None or gcs == address else f"{address} ({gcs})"
