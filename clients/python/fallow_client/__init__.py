"""A Python client for Fallow: submit projects, follow them and read their verified results.

    from fallow_client import Client

    with Client("http://127.0.0.1:7070", token=TOKEN) as fallow:
        project = fallow.submit("primes.toml")       # signed with your submitter key
        fallow.wait(project)
        for unit, output in fallow.results(project):
            print(unit, output.decode())
        # fallow.pause(project), .resume, .cancel, .retry, .reduce: submitter key only

# Layout
- `client`: `Client` and the dataclasses it returns (`Status`, `Verified`, `Failed`,
  `Aggregate`, `Submitted`): the gRPC calls, as the Rust CLI's `fallow/src/client.rs`.
- `project`: `Project`, `load_manifest` (the manifest as `fallow submit` reads it) and
  `SubmitterKey` (the key file `fallow key` uses); the signatures every unit carries.
- `errors`: every exception is a `FallowError`.
- `_proto`: code generated from proto/proto/fallow.proto by `generate.py` (committed;
  a test fails when it drifts from the proto). Nothing else names protobuf types.
"""

from .client import Aggregate, Client, Controlled, Failed, Status, Submitted, Verified
from .errors import (
    AuthenticationError,
    ConnectionError,
    FallowError,
    KeyFileError,
    ManifestError,
    NotFound,
    ProjectRefused,
    Timeout,
)
from .project import Limits, Project, SubmitterKey, load_manifest

__all__ = [
    "Aggregate", "AuthenticationError", "Client", "Controlled", "ConnectionError", "Failed", "FallowError",
    "KeyFileError", "Limits", "ManifestError", "NotFound", "Project", "ProjectRefused",
    "Status", "Submitted", "SubmitterKey", "Timeout", "Verified", "load_manifest",
]
