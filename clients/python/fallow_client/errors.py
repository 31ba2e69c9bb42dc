"""The exceptions the client raises; every one is a `FallowError`."""

from __future__ import annotations

import builtins


class FallowError(Exception):
    """Anything the Fallow client refuses or the coordinator refused."""


class ManifestError(FallowError):
    """The manifest or project is not valid; the message names the key and the fix."""


class KeyFileError(FallowError):
    """The submitter key file cannot be read, made or used."""


class ConnectionError(FallowError, builtins.ConnectionError):  # noqa: A001
    """The coordinator cannot be reached at the URL given, or is not the one pinned. Also a
    built-in `ConnectionError`, so code catching that one catches it too."""


class AuthenticationError(FallowError):
    """The coordinator refused the call's token (missing, unknown or revoked)."""


class ProjectRefused(FallowError):
    """The coordinator refused the project (invalid, or a bad signature)."""


class NotFound(FallowError):
    """No such project on this coordinator."""


class Timeout(FallowError):
    """`Client.wait` gave up before the project finished."""
