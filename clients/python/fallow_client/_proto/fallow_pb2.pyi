from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_ACTION_UNSPECIFIED: _ClassVar[ControlAction]
    CONTROL_ACTION_CANCEL: _ClassVar[ControlAction]
    CONTROL_ACTION_PAUSE: _ClassVar[ControlAction]
    CONTROL_ACTION_RESUME: _ClassVar[ControlAction]
    CONTROL_ACTION_RETRY: _ClassVar[ControlAction]
    CONTROL_ACTION_REDUCE: _ClassVar[ControlAction]

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    FAILURE_KIND_FUEL_EXHAUSTED: _ClassVar[FailureKind]
    FAILURE_KIND_TIMEOUT: _ClassVar[FailureKind]
    FAILURE_KIND_MEMORY_EXHAUSTED: _ClassVar[FailureKind]
    FAILURE_KIND_STACK_OVERFLOW: _ClassVar[FailureKind]
    FAILURE_KIND_OUTPUT_TOO_LARGE: _ClassVar[FailureKind]
    FAILURE_KIND_TRAP: _ClassVar[FailureKind]
    FAILURE_KIND_EXIT_CODE: _ClassVar[FailureKind]
    FAILURE_KIND_BAD_MODULE: _ClassVar[FailureKind]
    FAILURE_KIND_CHECKPOINT_TOO_LARGE: _ClassVar[FailureKind]
    FAILURE_KIND_BAD_SIGNATURE: _ClassVar[FailureKind]
CONTROL_ACTION_UNSPECIFIED: ControlAction
CONTROL_ACTION_CANCEL: ControlAction
CONTROL_ACTION_PAUSE: ControlAction
CONTROL_ACTION_RESUME: ControlAction
CONTROL_ACTION_RETRY: ControlAction
CONTROL_ACTION_REDUCE: ControlAction
FAILURE_KIND_UNSPECIFIED: FailureKind
FAILURE_KIND_FUEL_EXHAUSTED: FailureKind
FAILURE_KIND_TIMEOUT: FailureKind
FAILURE_KIND_MEMORY_EXHAUSTED: FailureKind
FAILURE_KIND_STACK_OVERFLOW: FailureKind
FAILURE_KIND_OUTPUT_TOO_LARGE: FailureKind
FAILURE_KIND_TRAP: FailureKind
FAILURE_KIND_EXIT_CODE: FailureKind
FAILURE_KIND_BAD_MODULE: FailureKind
FAILURE_KIND_CHECKPOINT_TOO_LARGE: FailureKind
FAILURE_KIND_BAD_SIGNATURE: FailureKind

class ProveRequest(_message.Message):
    __slots__ = ("nonce", "peer_addr", "coordinator_key")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    peer_addr: str
    coordinator_key: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., peer_addr: _Optional[str] = ..., coordinator_key: _Optional[bytes] = ...) -> None: ...

class ProveResponse(_message.Message):
    __slots__ = ("public_key", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("fuel", "memory_mb", "wall_seconds", "max_output_bytes", "nan_canonicalization", "max_checkpoint_bytes")
    FUEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAN_CANONICALIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    fuel: int
    memory_mb: int
    wall_seconds: int
    max_output_bytes: int
    nan_canonicalization: bool
    max_checkpoint_bytes: int
    def __init__(self, fuel: _Optional[int] = ..., memory_mb: _Optional[int] = ..., wall_seconds: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., nan_canonicalization: _Optional[bool] = ..., max_checkpoint_bytes: _Optional[int] = ...) -> None: ...

class UnitInput(_message.Message):
    __slots__ = ("name", "input", "signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: bytes
    signature: bytes
    def __init__(self, name: _Optional[str] = ..., input: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitProjectRequest(_message.Message):
    __slots__ = ("name", "module", "reducer", "replication", "quorum", "max_replicas", "limits", "units", "manifest", "fixed_replication", "error_bound", "submitter_key", "once", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    REDUCER_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    FIXED_REPLICATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_BOUND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    ONCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    module: bytes
    reducer: bytes
    replication: int
    quorum: int
    max_replicas: int
    limits: Limits
    units: _containers.RepeatedCompositeFieldContainer[UnitInput]
    manifest: str
    fixed_replication: bool
    error_bound: float
    submitter_key: bytes
    once: bool
    data: _containers.RepeatedCompositeFieldContainer[DataFile]
    def __init__(self, name: _Optional[str] = ..., module: _Optional[bytes] = ..., reducer: _Optional[bytes] = ..., replication: _Optional[int] = ..., quorum: _Optional[int] = ..., max_replicas: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., units: _Optional[_Iterable[_Union[UnitInput, _Mapping]]] = ..., manifest: _Optional[str] = ..., fixed_replication: _Optional[bool] = ..., error_bound: _Optional[float] = ..., submitter_key: _Optional[bytes] = ..., once: _Optional[bool] = ..., data: _Optional[_Iterable[_Union[DataFile, _Mapping]]] = ...) -> None: ...

class DataFile(_message.Message):
    __slots__ = ("name", "size", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    digest: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class HasDataRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class HasDataResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, present: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("digest", "size", "offset", "bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    size: int
    offset: int
    bytes: bytes
    def __init__(self, digest: _Optional[bytes] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., bytes: _Optional[bytes] = ...) -> None: ...

class PutDataResponse(_message.Message):
    __slots__ = ("already_held",)
    ALREADY_HELD_FIELD_NUMBER: _ClassVar[int]
    already_held: bool
    def __init__(self, already_held: _Optional[bool] = ...) -> None: ...

class GetDataRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    offset: int
    def __init__(self, digest: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class SubmitProjectResponse(_message.Message):
    __slots__ = ("project_id", "duplicates", "reused")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    duplicates: _containers.RepeatedScalarFieldContainer[int]
    reused: bool
    def __init__(self, project_id: _Optional[int] = ..., duplicates: _Optional[_Iterable[int]] = ..., reused: _Optional[bool] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    def __init__(self, project_id: _Optional[int] = ...) -> None: ...

class ProjectStatus(_message.Message):
    __slots__ = ("id", "name", "total", "verified", "failed", "in_progress", "pending", "finished", "executions", "disputes", "has_reducer", "aggregate_ready", "aggregate_error", "replication", "quorum", "credit", "solo", "spot_checks", "mismatches", "reopened", "submitter", "workers_running", "workers_suspended", "workers_idle", "fleet", "waiting", "warnings", "state", "cancelled", "terms")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    DISPUTES_FIELD_NUMBER: _ClassVar[int]
    HAS_REDUCER_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_READY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    SOLO_FIELD_NUMBER: _ClassVar[int]
    SPOT_CHECKS_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    REOPENED_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_IDLE_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    total: int
    verified: int
    failed: int
    in_progress: int
    pending: int
    finished: bool
    executions: int
    disputes: int
    has_reducer: bool
    aggregate_ready: bool
    aggregate_error: str
    replication: int
    quorum: int
    credit: int
    solo: int
    spot_checks: int
    mismatches: int
    reopened: int
    submitter: str
    workers_running: int
    workers_suspended: int
    workers_idle: int
    fleet: str
    waiting: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    state: str
    cancelled: int
    terms: bytes
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., total: _Optional[int] = ..., verified: _Optional[int] = ..., failed: _Optional[int] = ..., in_progress: _Optional[int] = ..., pending: _Optional[int] = ..., finished: _Optional[bool] = ..., executions: _Optional[int] = ..., disputes: _Optional[int] = ..., has_reducer: _Optional[bool] = ..., aggregate_ready: _Optional[bool] = ..., aggregate_error: _Optional[str] = ..., replication: _Optional[int] = ..., quorum: _Optional[int] = ..., credit: _Optional[int] = ..., solo: _Optional[int] = ..., spot_checks: _Optional[int] = ..., mismatches: _Optional[int] = ..., reopened: _Optional[int] = ..., submitter: _Optional[str] = ..., workers_running: _Optional[int] = ..., workers_suspended: _Optional[int] = ..., workers_idle: _Optional[int] = ..., fleet: _Optional[str] = ..., waiting: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., cancelled: _Optional[int] = ..., terms: _Optional[bytes] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("project_id", "action", "submitter_key")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    action: ControlAction
    submitter_key: bytes
    def __init__(self, project_id: _Optional[int] = ..., action: _Optional[_Union[ControlAction, str]] = ..., submitter_key: _Optional[bytes] = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("project_id", "submitter_key", "units")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    submitter_key: bytes
    units: _containers.RepeatedCompositeFieldContainer[UnitInput]
    def __init__(self, project_id: _Optional[int] = ..., submitter_key: _Optional[bytes] = ..., units: _Optional[_Iterable[_Union[UnitInput, _Mapping]]] = ...) -> None: ...

class ControlResponse(_message.Message):
    __slots__ = ("state", "units", "pending", "in_progress")
    STATE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    state: str
    units: int
    pending: int
    in_progress: int
    def __init__(self, state: _Optional[str] = ..., units: _Optional[int] = ..., pending: _Optional[int] = ..., in_progress: _Optional[int] = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects",)
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[ProjectStatus]
    def __init__(self, projects: _Optional[_Iterable[_Union[ProjectStatus, _Mapping]]] = ...) -> None: ...

class GetResultsRequest(_message.Message):
    __slots__ = ("project_id", "follow")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    follow: bool
    def __init__(self, project_id: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class ResultItem(_message.Message):
    __slots__ = ("verified", "failed", "aggregate", "aggregate_error")
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ERROR_FIELD_NUMBER: _ClassVar[int]
    verified: VerifiedOutput
    failed: FailedUnit
    aggregate: bytes
    aggregate_error: str
    def __init__(self, verified: _Optional[_Union[VerifiedOutput, _Mapping]] = ..., failed: _Optional[_Union[FailedUnit, _Mapping]] = ..., aggregate: _Optional[bytes] = ..., aggregate_error: _Optional[str] = ...) -> None: ...

class VerifiedOutput(_message.Message):
    __slots__ = ("unit", "output", "digest", "fuel", "signers", "verified_ms")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FUEL_FIELD_NUMBER: _ClassVar[int]
    SIGNERS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_MS_FIELD_NUMBER: _ClassVar[int]
    unit: str
    output: bytes
    digest: bytes
    fuel: int
    signers: _containers.RepeatedScalarFieldContainer[bytes]
    verified_ms: int
    def __init__(self, unit: _Optional[str] = ..., output: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., fuel: _Optional[int] = ..., signers: _Optional[_Iterable[bytes]] = ..., verified_ms: _Optional[int] = ...) -> None: ...

class FailedUnit(_message.Message):
    __slots__ = ("unit", "reason")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    unit: str
    reason: str
    def __init__(self, unit: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("public_key", "name", "peer_addr", "cores", "version", "signature", "account", "team", "platform", "fuel_rules")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    FUEL_RULES_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    name: str
    peer_addr: str
    cores: int
    version: str
    signature: bytes
    account: str
    team: str
    platform: str
    fuel_rules: int
    def __init__(self, public_key: _Optional[bytes] = ..., name: _Optional[str] = ..., peer_addr: _Optional[str] = ..., cores: _Optional[int] = ..., version: _Optional[str] = ..., signature: _Optional[bytes] = ..., account: _Optional[str] = ..., team: _Optional[str] = ..., platform: _Optional[str] = ..., fuel_rules: _Optional[int] = ...) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("public_key", "addr")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    addr: str
    def __init__(self, public_key: _Optional[bytes] = ..., addr: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("heartbeat_ms", "lease_ms", "peers", "now_ms", "coordinator_key", "membership_credential", "peer_warning")
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    PEER_WARNING_FIELD_NUMBER: _ClassVar[int]
    heartbeat_ms: int
    lease_ms: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    now_ms: int
    coordinator_key: bytes
    membership_credential: bytes
    peer_warning: str
    def __init__(self, heartbeat_ms: _Optional[int] = ..., lease_ms: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., now_ms: _Optional[int] = ..., coordinator_key: _Optional[bytes] = ..., membership_credential: _Optional[bytes] = ..., peer_warning: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("public_key", "held_units", "peers_version", "run_state", "state_reason")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HELD_UNITS_FIELD_NUMBER: _ClassVar[int]
    PEERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    held_units: _containers.RepeatedScalarFieldContainer[int]
    peers_version: int
    run_state: str
    state_reason: str
    def __init__(self, public_key: _Optional[bytes] = ..., held_units: _Optional[_Iterable[int]] = ..., peers_version: _Optional[int] = ..., run_state: _Optional[str] = ..., state_reason: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("settled_units", "peers_version", "peers", "unknown_worker", "now_ms", "membership_credential")
    SETTLED_UNITS_FIELD_NUMBER: _ClassVar[int]
    PEERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_WORKER_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    settled_units: _containers.RepeatedScalarFieldContainer[int]
    peers_version: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    unknown_worker: bool
    now_ms: int
    membership_credential: bytes
    def __init__(self, settled_units: _Optional[_Iterable[int]] = ..., peers_version: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., unknown_worker: _Optional[bool] = ..., now_ms: _Optional[int] = ..., membership_credential: _Optional[bytes] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("public_key", "max_units", "accept_submitters", "allow_unsigned")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_UNITS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_SUBMITTERS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNSIGNED_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    max_units: int
    accept_submitters: _containers.RepeatedScalarFieldContainer[bytes]
    allow_unsigned: bool
    def __init__(self, public_key: _Optional[bytes] = ..., max_units: _Optional[int] = ..., accept_submitters: _Optional[_Iterable[bytes]] = ..., allow_unsigned: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("project_id", "unit_id", "unit_name", "input", "module_digest", "limits", "quorum", "lease_ms", "submitter_key", "terms", "signature", "ticket", "data")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MODULE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    unit_id: int
    unit_name: str
    input: bytes
    module_digest: bytes
    limits: Limits
    quorum: int
    lease_ms: int
    submitter_key: bytes
    terms: bytes
    signature: bytes
    ticket: LeaseTicket
    data: _containers.RepeatedCompositeFieldContainer[DataFile]
    def __init__(self, project_id: _Optional[int] = ..., unit_id: _Optional[int] = ..., unit_name: _Optional[str] = ..., input: _Optional[bytes] = ..., module_digest: _Optional[bytes] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., quorum: _Optional[int] = ..., lease_ms: _Optional[int] = ..., submitter_key: _Optional[bytes] = ..., terms: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., ticket: _Optional[_Union[LeaseTicket, _Mapping]] = ..., data: _Optional[_Iterable[_Union[DataFile, _Mapping]]] = ...) -> None: ...

class LeaseTicket(_message.Message):
    __slots__ = ("expires_ms", "signature")
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    expires_ms: int
    signature: bytes
    def __init__(self, expires_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("assignments", "retry_after_ms", "reason")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    retry_after_ms: int
    reason: str
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetModuleRequest(_message.Message):
    __slots__ = ("digest", "fuel_rules", "canonical_nans")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FUEL_RULES_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_NANS_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    fuel_rules: int
    canonical_nans: bool
    def __init__(self, digest: _Optional[bytes] = ..., fuel_rules: _Optional[int] = ..., canonical_nans: _Optional[bool] = ...) -> None: ...

class GetModuleResponse(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: bytes
    def __init__(self, module: _Optional[bytes] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("public_key", "unit_id", "kind", "detail", "exit_code")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    unit_id: int
    kind: FailureKind
    detail: str
    exit_code: int
    def __init__(self, public_key: _Optional[bytes] = ..., unit_id: _Optional[int] = ..., kind: _Optional[_Union[FailureKind, str]] = ..., detail: _Optional[str] = ..., exit_code: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Claim(_message.Message):
    __slots__ = ("project_id", "unit_id", "digest", "fuel", "worker_key", "signature", "salt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FUEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    unit_id: int
    digest: bytes
    fuel: int
    worker_key: bytes
    signature: bytes
    salt: bytes
    def __init__(self, project_id: _Optional[int] = ..., unit_id: _Optional[int] = ..., digest: _Optional[bytes] = ..., fuel: _Optional[int] = ..., worker_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., salt: _Optional[bytes] = ...) -> None: ...

class Commitment(_message.Message):
    __slots__ = ("project_id", "unit_id", "worker_key", "seal", "signature", "ticket")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_KEY_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    unit_id: int
    worker_key: bytes
    seal: bytes
    signature: bytes
    ticket: LeaseTicket
    def __init__(self, project_id: _Optional[int] = ..., unit_id: _Optional[int] = ..., worker_key: _Optional[bytes] = ..., seal: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., ticket: _Optional[_Union[LeaseTicket, _Mapping]] = ...) -> None: ...

class CertificateSubmission(_message.Message):
    __slots__ = ("unit_id", "claims", "output", "submitter_key")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    unit_id: int
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    output: bytes
    submitter_key: bytes
    def __init__(self, unit_id: _Optional[int] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., output: _Optional[bytes] = ..., submitter_key: _Optional[bytes] = ...) -> None: ...

class CertificateAck(_message.Message):
    __slots__ = ("accepted", "recorded", "refused")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    recorded: bool
    refused: Refusal
    def __init__(self, accepted: _Optional[bool] = ..., recorded: _Optional[bool] = ..., refused: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CertificateBatch(_message.Message):
    __slots__ = ("submitter_key", "certificates")
    SUBMITTER_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    submitter_key: bytes
    certificates: _containers.RepeatedCompositeFieldContainer[CertificateSubmission]
    def __init__(self, submitter_key: _Optional[bytes] = ..., certificates: _Optional[_Iterable[_Union[CertificateSubmission, _Mapping]]] = ...) -> None: ...

class CertificateAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[CertificateAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[CertificateAck, _Mapping]]] = ...) -> None: ...

class Dispute(_message.Message):
    __slots__ = ("public_key", "unit_id", "claims")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    unit_id: int
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    def __init__(self, public_key: _Optional[bytes] = ..., unit_id: _Optional[int] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ...) -> None: ...

class ReturnUnitsRequest(_message.Message):
    __slots__ = ("public_key", "unit_ids")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_IDS_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    unit_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, public_key: _Optional[bytes] = ..., unit_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BoardExchange(_message.Message):
    __slots__ = ("commitments", "reveals", "want_units")
    COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    REVEALS_FIELD_NUMBER: _ClassVar[int]
    WANT_UNITS_FIELD_NUMBER: _ClassVar[int]
    commitments: _containers.RepeatedCompositeFieldContainer[Commitment]
    reveals: _containers.RepeatedCompositeFieldContainer[Claim]
    want_units: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, commitments: _Optional[_Iterable[_Union[Commitment, _Mapping]]] = ..., reveals: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., want_units: _Optional[_Iterable[int]] = ...) -> None: ...

class UnitView(_message.Message):
    __slots__ = ("unit_id", "commitments", "reveals", "committed")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    REVEALS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    unit_id: int
    commitments: int
    reveals: _containers.RepeatedCompositeFieldContainer[Claim]
    committed: _containers.RepeatedCompositeFieldContainer[Commitment]
    def __init__(self, unit_id: _Optional[int] = ..., commitments: _Optional[int] = ..., reveals: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., committed: _Optional[_Iterable[_Union[Commitment, _Mapping]]] = ...) -> None: ...

class BoardRejection(_message.Message):
    __slots__ = ("unit_id", "reason")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    unit_id: int
    reason: str
    def __init__(self, unit_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class BoardViews(_message.Message):
    __slots__ = ("views", "rejected")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    views: _containers.RepeatedCompositeFieldContainer[UnitView]
    rejected: _containers.RepeatedCompositeFieldContainer[BoardRejection]
    def __init__(self, views: _Optional[_Iterable[_Union[UnitView, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[BoardRejection, _Mapping]]] = ...) -> None: ...

class RelayExchangeRequest(_message.Message):
    __slots__ = ("public_key", "board_key", "exchange")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    BOARD_KEY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    board_key: bytes
    exchange: BoardExchange
    def __init__(self, public_key: _Optional[bytes] = ..., board_key: _Optional[bytes] = ..., exchange: _Optional[_Union[BoardExchange, _Mapping]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("reporter_key", "commitment", "claim", "other")
    REPORTER_KEY_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    reporter_key: bytes
    commitment: Commitment
    claim: Claim
    other: Commitment
    def __init__(self, reporter_key: _Optional[bytes] = ..., commitment: _Optional[_Union[Commitment, _Mapping]] = ..., claim: _Optional[_Union[Claim, _Mapping]] = ..., other: _Optional[_Union[Commitment, _Mapping]] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountInfo(_message.Message):
    __slots__ = ("name", "team", "credit", "verified", "workers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    team: str
    credit: int
    verified: int
    workers: int
    def __init__(self, name: _Optional[str] = ..., team: _Optional[str] = ..., credit: _Optional[int] = ..., verified: _Optional[int] = ..., workers: _Optional[int] = ...) -> None: ...

class TeamInfo(_message.Message):
    __slots__ = ("name", "credit", "accounts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    credit: int
    accounts: int
    def __init__(self, name: _Optional[str] = ..., credit: _Optional[int] = ..., accounts: _Optional[int] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts", "teams")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[AccountInfo]
    teams: _containers.RepeatedCompositeFieldContainer[TeamInfo]
    def __init__(self, accounts: _Optional[_Iterable[_Union[AccountInfo, _Mapping]]] = ..., teams: _Optional[_Iterable[_Union[TeamInfo, _Mapping]]] = ...) -> None: ...
