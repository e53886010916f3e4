"""Keep webhook URLs and tokens out of every log line, message and exception.

A webhook URL is itself a credential (Slack puts the secret in the path), so the only part of it that may be
shown is `scheme://host/…`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "…"


def redact_url(url: str | None) -> str:
    """`https://hooks.example.com/services/T0/B0/xyz?k=v` -> `https://hooks.example.com/…`."""
    if not url:
        return "(none)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    return f"{parts.scheme or '?'}://{host}{port}/{MASK}"


class Redactor:
    """Replaces every known secret (and each secret-looking piece of it) in a string with `…`."""

    def __init__(self, *secrets: str | None):
        pieces: dict[str, str] = {}
        for s in secrets:
            if not s:
                continue
            try:
                parts = urlsplit(s)
            except ValueError:
                pieces[s] = MASK
                continue
            pieces[s] = redact_url(s) if parts.scheme and parts.netloc else MASK
            # The path and query of a URL are the secret part; an exception may quote them without the host.
            for piece in (parts.path, parts.query, parts.path.strip("/")):
                if len(piece) >= 4:
                    pieces.setdefault(piece, MASK)
        # Longest first, so that a URL is masked whole rather than piece by piece.
        self._pieces = sorted(pieces.items(), key=lambda kv: len(kv[0]), reverse=True)

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret, mask in self._pieces:
            out = out.replace(secret, mask)
        return out
