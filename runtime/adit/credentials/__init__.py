"""Tunnel credentials files, tunnel tokens and origin certificates (cert.pem)."""

from __future__ import annotations

from adit.credentials.errors import (
    CredentialsError,
    CredentialsFileError,
    InvalidCredentialsJson,
    InvalidTunnelToken,
    OriginCertError,
)
from adit.credentials.origin_cert import (
    OriginCert,
    decode_origin_cert,
    encode_origin_cert,
    read_origin_cert,
    write_origin_cert,
)
from adit.credentials.search_path import (
    ORIGIN_CERT_FILE,
    SEARCH_DIRECTORIES,
    default_login_directory,
    find_credentials_file,
    find_default_origin_cert,
    missing_origin_cert_message,
)
from adit.credentials.tunnel_credentials import (
    NIL_TUNNEL_ID,
    TunnelCredentials,
    credentials_from_json,
    credentials_to_json,
    load_credentials_file,
    write_credentials_file,
)
from adit.credentials.tunnel_token import decode_tunnel_token, encode_tunnel_token

__all__ = [
    "NIL_TUNNEL_ID",
    "ORIGIN_CERT_FILE",
    "SEARCH_DIRECTORIES",
    "CredentialsError",
    "CredentialsFileError",
    "InvalidCredentialsJson",
    "InvalidTunnelToken",
    "OriginCert",
    "OriginCertError",
    "TunnelCredentials",
    "credentials_from_json",
    "credentials_to_json",
    "decode_origin_cert",
    "decode_tunnel_token",
    "default_login_directory",
    "encode_origin_cert",
    "encode_tunnel_token",
    "find_credentials_file",
    "find_default_origin_cert",
    "load_credentials_file",
    "missing_origin_cert_message",
    "read_origin_cert",
    "write_credentials_file",
    "write_origin_cert",
]
