"""Typed settings: a TOML file, then DICOMNODE_* environment variables, then CLI flags.

Every option is documented with its default in `dicomnode/node.example.toml`. Unknown keys are
errors (a typo must not silently fall back to a default), reported with the key's full path.

Modules: `checks` (single values), `network` and `services` (the sections), `settings` (the whole), `loading`
(file, environment, flags, and the errors that name where a value came from), `review` (`config check`'s warnings
and the redacted dump). Callers import from the package.
"""
from __future__ import annotations

from dicomnode.config.checks import (
    AETitle,
    AE_TITLE_RE,
    CodeString,
    ConfigError,
    Network,
    Strict,
    USER_NAME_RE,
    check_ae_title,
    check_code_string,
    check_database_url,
    check_host,
    check_network,
    check_node_id,
    check_path,
    redact_url,
)
from dicomnode.config.network import (
    DICOMWEB_AE,
    Destination,
    NodeSettings,
    Route,
    RouteMatch,
    SecuritySettings,
    SenderSettings,
    SeriesSettings,
    TlsSettings,
    check_dicomweb_url,
)
from dicomnode.config.services import (
    AtnaSettings,
    ClinicalSettings,
    InferenceSettings,
    JobSettings,
    PriorPeer,
    PriorsSettings,
    RetentionSettings,
    WebSettings,
)
from dicomnode.config.settings import (
    Settings,
)
from dicomnode.config.loading import (
    ENV_PREFIX,
    EXAMPLE_CONFIG,
    load_settings,
    nearest_key,
    setting_keys,
    unknown_env_vars,
)
from dicomnode.config.review import (
    is_loopback_host,
    redacted_dump,
    security_warnings,
)

__all__ = [
    "AETitle",
    "AE_TITLE_RE",
    "AtnaSettings",
    "ClinicalSettings",
    "CodeString",
    "ConfigError",
    "DICOMWEB_AE",
    "Destination",
    "ENV_PREFIX",
    "EXAMPLE_CONFIG",
    "InferenceSettings",
    "JobSettings",
    "Network",
    "NodeSettings",
    "PriorPeer",
    "PriorsSettings",
    "RetentionSettings",
    "Route",
    "RouteMatch",
    "SecuritySettings",
    "SenderSettings",
    "SeriesSettings",
    "Settings",
    "Strict",
    "TlsSettings",
    "USER_NAME_RE",
    "WebSettings",
    "check_ae_title",
    "check_code_string",
    "check_database_url",
    "check_dicomweb_url",
    "check_host",
    "check_network",
    "check_node_id",
    "check_path",
    "is_loopback_host",
    "load_settings",
    "nearest_key",
    "redact_url",
    "redacted_dump",
    "security_warnings",
    "setting_keys",
    "unknown_env_vars",
]
