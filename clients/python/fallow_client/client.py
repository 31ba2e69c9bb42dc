"""`Client`: submit projects, follow their progress and read their results over gRPC.

The same calls as the Rust CLI (`fallow/src/client.rs`): `SubmitProject` with the token as
`authorization: Bearer TOKEN`, `ListProjects`, and the `GetResults` stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import socket
import ssl
import time
import urllib.parse
from typing import Iterator, Optional, Union

import blake3
import grpc

from . import errors
from ._proto import fallow_pb2 as pb
from ._proto import fallow_pb2_grpc as pb_grpc
from .project import Project, SubmitterKey, load_manifest

#: `fallow`'s default coordinator.
DEFAULT_URL = "http://127.0.0.1:7070"
#: Largest message either way, as the Rust client allows (modules and outputs are big).
MAX_MESSAGE = 256 << 20


@dataclasses.dataclass(frozen=True)
class Status:
    """A project's progress (the fields of `fallow status --json`)."""

    id: int
    name: str
    total: int
    verified: int
    failed: int
    in_progress: int
    pending: int
    executions: int
    disputes: int
    replication: int
    quorum: int
    credit: int
    solo: int
    spot_checks: int
    mismatches: int
    reopened: int
    #: Every unit settled (and the aggregate computed, if there is a reducer).
    finished: bool
    #: `running`, `reducing`, `done`, `partial` (some units failed), `failed`, `paused` or
    #: `cancelled`.
    outcome: str
    has_reducer: bool
    aggregate_ready: bool
    #: Why the reducer failed, if it did.
    aggregate_error: str
    #: The submitter key that signed the project, hex.
    submitter: str
    workers_running: int
    workers_suspended: int
    workers_idle: int
    #: The fleet in words.
    fleet: str
    #: Units that need a worker of another account, in words.
    waiting: tuple[str, ...]
    #: What may be wrong with the project itself, e.g. every unit giving the same output.
    warnings: tuple[str, ...] = ()
    #: The submitter's control: `active`, `paused` or `cancelled`.
    state: str = "active"
    #: Units ended by a cancel before they settled.
    cancelled: int = 0

    @classmethod
    def _from_pb(cls, p: "pb.ProjectStatus") -> "Status":
        lists = ("outcome", "waiting", "warnings", "state")
        fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(cls) if f.name not in lists}
        return cls(
            **fields,
            waiting=tuple(p.waiting),
            warnings=tuple(p.warnings),
            outcome=_outcome(p),
            state=p.state or "active",
        )


def _outcome(p: "pb.ProjectStatus") -> str:
    """`protocol::status::Outcome::of`: finished is not the same as done."""
    if p.state == "cancelled":
        return "cancelled"
    if p.verified + p.failed + p.cancelled < p.total:
        return "paused" if p.state == "paused" else "running"
    if not p.finished:
        return "reducing"
    if p.aggregate_error or (p.verified == 0 and p.failed > 0):
        return "failed"
    return "partial" if p.failed > 0 else "done"


@dataclasses.dataclass(frozen=True)
class Controlled:
    """What a control call (`pause`, `resume`, `cancel`, `retry`, `reduce`) left: the
    project's state, the units it changed, and the units pending and leased now."""

    state: str
    units: int
    pending: int
    in_progress: int


@dataclasses.dataclass(frozen=True)
class Verified:
    """A verified unit: its output, the output's BLAKE3 digest, the fuel it took and the
    public keys of the workers whose matching results verified it."""

    unit: str
    output: bytes
    digest: bytes
    fuel: int
    signers: tuple[bytes, ...]
    verified_ms: int = 0
    """When the coordinator recorded it, Unix milliseconds (0 from an older coordinator)."""


@dataclasses.dataclass(frozen=True)
class Failed:
    """A unit that failed on every replica, with the reason."""

    unit: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """The reducer's output, or (`error` set, `output` empty) why the reducer failed."""

    output: bytes
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Submitted:
    """What the coordinator did with a project."""

    #: The new project's id (or, when `reused`, the earliest duplicate's).
    id: int
    #: Earlier projects with the same module, inputs and terms, oldest first.
    duplicates: tuple[int, ...]
    #: Nothing was created (`once=True` and a duplicate exists).
    reused: bool


class Client:
    """A connection to a Fallow coordinator.

    `url` is what `fallow coordinator` prints: `http://127.0.0.1:PORT` on loopback, or
    `https://HOST:PORT#sha256=HEX` elsewhere (the certificate is pinned by that
    fingerprint, as the Rust CLI does). `token` (default `$FALLOW_TOKEN`) is needed to
    submit; `submitter_key` is the key file path (default `$FALLOW_SUBMITTER_KEY` or the
    file `fallow key` uses), made on first submit. Use it as a context manager or call
    `close()`.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        submitter_key: "os.PathLike[str] | str | None" = None,
        *,
        insecure_plaintext: bool = False,
        timeout: float = 60.0,
    ):
        self.url = url or os.environ.get("FALLOW_COORDINATOR") or DEFAULT_URL
        self.token = token if token is not None else os.environ.get("FALLOW_TOKEN")
        self._key_path = submitter_key
        self._key: Optional[SubmitterKey] = None
        self.timeout = timeout
        self._channel = _channel(self.url, insecure_plaintext)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self._channel.close()

    @property
    def submitter_key(self) -> SubmitterKey:
        """The key that signs submitted projects (loaded or made on first use)."""
        if self._key is None:
            self._key = SubmitterKey.load_or_create(self._key_path)
        return self._key

    def submit(self, project: Union[Project, "os.PathLike[str]", str], *, once: bool = False) -> int:
        """Signs and uploads a project (a `Project`, or the path of a manifest); returns its
        id. With `once`, nothing is created when the same project was submitted before,
        and the earlier one's id is returned. `submit_detailed` says which happened."""
        return self.submit_detailed(project, once=once).id

    def submit_detailed(self, project: Union[Project, "os.PathLike[str]", str], *, once: bool = False) -> Submitted:
        """`submit`, returning the duplicates the coordinator found too."""
        if not isinstance(project, Project):
            project = load_manifest(project)
        key = self.submitter_key
        signatures = project.sign(key)
        request = pb.SubmitProjectRequest(
            name=project.name,
            module=project.module,
            reducer=project.reducer or b"",
            replication=project.replication,
            quorum=project.quorum,
            max_replicas=project.max_replicas,
            limits=pb.Limits(**dataclasses.asdict(project.limits)),
            units=[
                pb.UnitInput(name=name, input=data, signature=sig)
                for (name, data), sig in zip(project.units, signatures)
            ],
            manifest=project.manifest,
            fixed_replication=not project.adaptive,
            error_bound=project.error_bound,
            submitter_key=key.public,
            once=once,
        )
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        try:
            r = self._stub.SubmitProject(request, metadata=metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e, "refused the project") from None
        return Submitted(id=r.project_id, duplicates=tuple(r.duplicates), reused=r.reused)

    def pause(self, project: int) -> Controlled:
        """Pauses a project: none of its units is leased until `resume`. Signed with the
        submitter key; any other key is refused (`ProjectRefused`)."""
        return self._control(project, pb.CONTROL_ACTION_PAUSE, "pause")

    def resume(self, project: int) -> Controlled:
        """Resumes a paused project."""
        return self._control(project, pb.CONTROL_ACTION_RESUME, "resume")

    def cancel(self, project: int) -> Controlled:
        """Cancels a project, for good: unsettled units end as cancelled, verified results
        stay."""
        return self._control(project, pb.CONTROL_ACTION_CANCEL, "cancel")

    def retry(self, project: int) -> Controlled:
        """Runs the project's failed units again, their failure history cleared."""
        return self._control(project, pb.CONTROL_ACTION_RETRY, "retry")

    def reduce(self, project: int) -> Controlled:
        """Runs a finished project's reducer again."""
        return self._control(project, pb.CONTROL_ACTION_REDUCE, "reduce")

    def _control(self, project: int, action: int, verb: str) -> Controlled:
        key = self.submitter_key
        request = pb.ControlRequest(project_id=project, action=action, submitter_key=key.public)
        try:
            r = self._stub.ControlProject(
                request, metadata=[_call_stamp(key, "ControlProject", request)], timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e, f"refused to {verb} project {project}") from None
        return Controlled(state=r.state, units=r.units, pending=r.pending, in_progress=r.in_progress)

    def status(self, project: Optional[int] = None) -> list[Status]:
        """Progress of one project, or of all when `project` is None."""
        try:
            r = self._stub.ListProjects(pb.ListProjectsRequest(project_id=project or 0), timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e, "could not list projects") from None
        return [Status._from_pb(p) for p in r.projects]

    def project(self, project: int) -> Status:
        """One project's progress; `NotFound` when the coordinator has no such project."""
        found = self.status(project)
        if not found:
            raise errors.NotFound(f"project {project} is not on {self.url}")
        return found[0]

    def wait(self, project: int, *, timeout: Optional[float] = None, poll: float = 0.5) -> Status:
        """Polls until the project is finished (every unit settled, and the aggregate
        computed if there is a reducer); returns its last status. Raises `Timeout` after
        `timeout` seconds (None: wait as long as it takes). Check `outcome`: finished is
        not the same as done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.project(project)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.Timeout(
                    f"project {project} is not finished after {timeout} s: {status.verified} "
                    f"verified, {status.failed} failed of {status.total}; {status.fleet}"
                )
            time.sleep(poll)

    def results(self, project: int, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        """`(unit name, output)` per verified unit, streamed as the coordinator sends them
        (sorted by unit name; with `follow=True`, then each unit as it verifies, until the
        project is finished). `results_detailed` also yields failed units and the
        aggregate."""
        for item in self.results_detailed(project, follow=follow):
            if isinstance(item, Verified):
                yield item.unit, item.output

    def results_detailed(
        self, project: int, follow: bool = False
    ) -> Iterator[Union[Verified, Failed, Aggregate]]:
        """Every result of a project: `Verified` units, `Failed` units, and at most one
        `Aggregate` (the reducer's output or its error), as `fallow results` writes them.
        With `follow=True` the iterator keeps going while the project runs: each unit is
        yielded as it verifies (a unit re-opened and verified again comes again), and the
        failed units and the aggregate follow once the project is finished."""
        try:
            request = pb.GetResultsRequest(project_id=project, follow=follow)
            for item in self._stub.GetResults(request, timeout=None):
                kind = item.WhichOneof("item")
                if kind == "verified":
                    v = item.verified
                    yield Verified(v.unit, v.output, v.digest, v.fuel, tuple(v.signers), v.verified_ms)
                elif kind == "failed":
                    yield Failed(item.failed.unit, item.failed.reason)
                elif kind == "aggregate":
                    yield Aggregate(item.aggregate)
                elif kind == "aggregate_error":
                    yield Aggregate(b"", item.aggregate_error)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DATA_LOSS:
                raise errors.FallowError(
                    f"the coordinator refused project {project}'s results: {e.details()}; "
                    "read them again once the project is finished"
                ) from None
            raise self._error(e, f"could not stream project {project}'s results") from None

    def failed(self, project: int) -> list[Failed]:
        """The failed units of a project, with their reasons."""
        return [i for i in self.results_detailed(project) if isinstance(i, Failed)]

    def aggregate(self, project: int) -> Optional[bytes]:
        """The reducer's output; None while there is none. Raises `FallowError` when the
        reducer failed."""
        for item in self.results_detailed(project):
            if isinstance(item, Aggregate):
                if item.error:
                    raise errors.FallowError(f"project {project}'s reducer failed: {item.error}")
                return item.output
        return None

    def _error(self, e: grpc.RpcError, what: str) -> errors.FallowError:
        """The exception for a failed call, with the coordinator's own words."""
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.ConnectionError(
                f"cannot reach the coordinator at {self.url} (is `fallow coordinator` running there?): {details}"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return errors.AuthenticationError(f"coordinator {self.url} {what}: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return errors.NotFound(f"coordinator {self.url}: {details}")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return errors.ProjectRefused(f"coordinator {self.url} {what}: {details}")
        return errors.FallowError(f"coordinator {self.url} {what}: {code.name}: {details}")


def _call_stamp(key: SubmitterKey, method: str, request: object) -> tuple[str, str]:
    """The `fallow-call` header of a control call (`protocol::call`): the submitter key's
    signature over the method, a timestamp (this machine's clock, in microseconds) and the
    BLAKE3 of the encoded request."""
    stamp_us = time.time_ns() // 1000
    body = request.SerializeToString()  # type: ignore[attr-defined]
    message = (
        b"fallow/call/v1\0"
        + len(method).to_bytes(8, "little")
        + method.encode()
        + stamp_us.to_bytes(8, "little")
        + blake3.blake3(body).digest()
    )
    return ("fallow-call", f"{stamp_us}.{key.sign(message).hex()}")


def _channel(url: str, insecure_plaintext: bool) -> grpc.Channel:
    """A channel to `url`: plain on loopback, TLS pinned to `#sha256=HEX` elsewhere."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise errors.ConnectionError(f"coordinator {url!r} must start with https:// (or http:// on loopback)")
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parsed.scheme == "http":
        if parsed.fragment:
            raise errors.ConnectionError(f"coordinator {url!r} pins a certificate but is http://: use https://")
        if not _is_loopback(host) and not insecure_plaintext:
            raise errors.ConnectionError(
                f"coordinator {url}: plain http:// is only for loopback; use the https://…#sha256=… URL "
                "`fallow coordinator` prints (or pass insecure_plaintext=True to send everything in clear)"
            )
        return grpc.insecure_channel(target, options=options)
    if not parsed.fragment.startswith("sha256="):
        raise errors.ConnectionError(
            f"coordinator {url}: the Python client needs the pinned URL `https://HOST:PORT#sha256=HEX` "
            "that `fallow coordinator` prints"
        )
    pin = parsed.fragment.removeprefix("sha256=").lower()
    pem = _pinned_certificate(host, port, pin, url)
    # The coordinator's self-signed certificate always names `localhost`; the pin, checked
    # above on the very certificate gRPC now trusts as its only root, is what matters.
    options.append(("grpc.ssl_target_name_override", "localhost"))
    credentials = grpc.ssl_channel_credentials(root_certificates=pem.encode())
    return grpc.secure_channel(target, credentials, options=options)


def _pinned_certificate(host: str, port: int, pin: str, url: str) -> str:
    """The coordinator's certificate (PEM) if its SHA-256 is `pin`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the fingerprint is checked below instead
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname=host if not _is_ip(host) else None) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as e:
        raise errors.ConnectionError(f"cannot reach the coordinator at {url}: {e}") from e
    if not der or hashlib.sha256(der).hexdigest() != pin:
        got = hashlib.sha256(der).hexdigest() if der else "none"
        raise errors.ConnectionError(
            f"coordinator {url}: its certificate has fingerprint sha256={got}, not the pinned one: "
            "refusing to talk to it (a different coordinator, or someone in between)"
        )
    return ssl.DER_cert_to_PEM_cert(der)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
