"""What `config check` and `serve` say about a valid configuration: risky settings, and the settings with every secret
hidden."""
from __future__ import annotations

import ipaddress
from typing import Any

from dicomnode.config.checks import redact_url
from dicomnode.config.settings import Settings
from dicomnode.core.passwords import is_token_hash


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_warnings(settings: Settings) -> list[str]:
    """Valid but risky settings, said loudly at start-up and by `config check`."""
    warnings = []
    node, security = settings.node, settings.security
    if not is_loopback_host(node.host) and not security.allowed_calling_aes and not security.allowed_hosts:
        warnings.append(
            f"the DICOM port {node.port} listens on {node.host} and accepts ANY calling AE from ANY host: "
            "set security.allowed_calling_aes and/or security.allowed_hosts "
            "(e.g. DICOMNODE_SECURITY__ALLOWED_HOSTS='[\"10.1.2.3\"]')")
    plain = [i for i, t in enumerate(settings.web.api_tokens) if not is_token_hash(t)]
    if plain:
        warnings.append(
            f"web.api_tokens {', '.join(f'[{i}]' for i in plain)} stored in PLAIN TEXT: anyone who reads the config "
            "can use them; replace each with a hash (`dicomnode token create --config FILE`)")
    return warnings


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data with every secret hidden (for `config check`)."""
    data = settings.model_dump(mode="json")
    web = data["web"]
    web["users"] = {name: "(password hash hidden)" for name in web["users"]}
    web["api_tokens"] = ["(hash hidden)" if is_token_hash(t) else "(plain-text token hidden)"
                         for t in settings.web.api_tokens]
    if web["session_secret"] is not None:
        web["session_secret"] = "(hidden)"
    if data["node"]["database_url"] is not None:
        data["node"]["database_url"] = redact_url(data["node"]["database_url"])
    return data
