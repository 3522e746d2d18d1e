"""Settings: the ``mail.*`` keys of an .ini file, parsed once.

(stub: the dataclass fields are fixed; parse_settings is being written)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Every ``mail.*`` setting, converted and checked."""

    delivery: str = 'direct'  # 'direct' | 'queued' | 'file'
    host: str = 'localhost'
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl: bool = False
    keyfile: str | None = None
    certfile: str | None = None
    tls_verify: bool = True
    cafile: str | None = None
    timeout: float = 30.0
    default_sender: str | None = None
    message_id_domain: str = 'localhost'
    queue_path: str | None = None
    queue_processor: bool = True
    queue_interval: float = 3.0
    queue_batch: int = 100
    queue_rate: float = 0.0
    retry_min: float = 300.0
    retry_max: float = 4000.0
    max_age: float = 432000.0
    file_path: str | None = None
