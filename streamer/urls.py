"""Source URL policy: the one place where an untrusted stream or scan URL is parsed.

Every URL the service is handed (``POST /v1/streams``, ``deepfake.sources``,
``DFM_SOURCES``, ``scan``) goes through :func:`parse_source_url` and comes out as a
:class:`SourceUrl`, or is refused with :class:`~streamer.errors.UrlRejected` naming the
rule it broke. Nothing downstream looks at the raw text again:

* strict characters: printable ASCII only, so no CR/LF/TAB/space can reach a protocol
  request line (FFmpeg would send them on to whatever listens at the port);
* a scheme allowed for the kind of source (``rtsp``/``rtsps`` for streams; ``http(s)``
  too for ``scan``; ``file`` only with ``DFM_ALLOW_FILE_SOURCES``, or a local path for
  ``scan``);
* a host, a port in 1..65535, user-info only together with a host;
* FFmpeg options that pin the protocol (``protocol_whitelist``) and the demuxer
  (``format_whitelist``), so no nested protocol (concat, subfile, data, hls, ...) and
  no non-video demuxer (tty, image sequences, playlists) can be reached;
* a destination policy (``DFM_SOURCE_ALLOW_NETS`` / ``DFM_SOURCE_DENY_NETS``) checked
  on every address the host resolves to, when the source connects.

Credentials never leave this module in clear: :attr:`SourceUrl.redacted` masks the
password, and :meth:`SourceUrl.scrub` removes it from any text (an FFmpeg error message
quotes the URL it was given).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from streamer.errors import UrlRejected

Kind = Literal["stream", "scan"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

STREAM_SCHEMES = ("rtsp", "rtsps")
SCAN_SCHEMES = ("rtsp", "rtsps", "http", "https")
# Link-local (cloud metadata at 169.254.169.254 among them) and the metadata addresses
# that sit outside it.
DEFAULT_DENY_NETS = (
    "169.254.0.0/16",
    "fe80::/10",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
)
# What FFmpeg may open, per scheme: the protocol itself and what it stacks on.
PROTOCOLS = {
    "rtsp": "rtsp,tcp",
    "rtsps": "rtsps,rtsp,tls,tcp",
    "http": "http,tcp",
    "https": "https,http,tls,tcp",
    "file": "file",
}
# Video containers and RTSP; FFmpeg matches a demuxer when any of its names is listed.
VIDEO_DEMUXERS = (
    "mov,mp4,matroska,webm,avi,mpegts,flv,asf,ogg,mxf,ivf,nut,mpeg,"
    "h264,hevc,mpegvideo,m4v,yuv4mpegpipe"
)
MAX_URL = 2048
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.?)*$")


@dataclass(frozen=True)
class NetPolicy:
    """Where sources may connect: every resolved address must pass both lists."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_DENY_NETS)
    )

    def check_address(self, address: str, host: str) -> None:
        ip = ipaddress.ip_address(address.split("%")[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        for net in self.deny:
            if ip.version == net.version and ip in net:
                raise UrlRejected(
                    "destination",
                    f"host {host} ({ip}) is in {net}, which DFM_SOURCE_DENY_NETS refuses",
                )
        if self.allow and not any(ip.version == n.version and ip in n for n in self.allow):
            raise UrlRejected(
                "destination",
                f"host {host} ({ip}) is outside DFM_SOURCE_ALLOW_NETS; add its network there",
            )


@dataclass(frozen=True)
class SourceUrl:
    """A URL that passed the policy; ``text`` is exactly what FFmpeg is given."""

    text: str
    scheme: str
    host: str | None
    port: int | None
    path: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def is_network(self) -> bool:
        return self.scheme != "file"

    @property
    def redacted(self) -> str:
        """The URL with its password masked, for logs, the API and the page."""
        if self.password is None:
            return self.text
        return self.text.replace(f":{self._raw_password()}@", ":***@", 1)

    def _raw_password(self) -> str:
        netloc = urlsplit(self.text).netloc
        userinfo = netloc.rpartition("@")[0]
        return userinfo.partition(":")[2]

    def scrub(self, text: str) -> str:
        """``text`` with the URL's password removed, however it is quoted."""
        if self.password is None:
            return text
        text = text.replace(self.text, self.redacted)
        for secret in {self._raw_password(), self.password}:
            if secret:
                text = text.replace(secret, "***")
        return text

    def ffmpeg_options(self) -> dict[str, str]:
        """Options for ``av.open``: the protocols and demuxers this URL may reach."""
        options = {
            "protocol_whitelist": PROTOCOLS[self.scheme],
            "format_whitelist": VIDEO_DEMUXERS + ("," + self.scheme if self.is_rtsp else ""),
        }
        if self.is_rtsp:
            options["rtsp_transport"] = "tcp"
            options["rtsp_flags"] = "prefer_tcp"
        return options

    @property
    def is_rtsp(self) -> bool:
        return self.scheme in ("rtsp", "rtsps")

    @property
    def local_path(self) -> str:
        """A ``file`` URL's path on this machine (a plain path as it is)."""
        return unquote(self.path) if self.text.lower().startswith("file:") else self.path

    def check_destination(self, policy: NetPolicy) -> None:
        """Resolve the host and check every address (blocking: call from a worker)."""
        if not self.is_network or self.host is None:
            return
        try:
            infos = socket.getaddrinfo(self.host, self.port or 0, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            from streamer.errors import SourceUnreachable

            raise SourceUnreachable(f"cannot resolve host {self.host}: {exc}") from None
        for info in infos:
            policy.check_address(str(info[4][0]), self.host)


def parse_source_url(
    text: str,
    *,
    kind: Kind = "stream",
    allow_file: bool = False,
    policy: NetPolicy | None = None,
) -> SourceUrl:
    """Parse ``text`` strictly; raise UrlRejected naming the rule it breaks.

    ``kind`` ``scan`` also takes ``http(s)`` URLs and plain local paths (the command
    line's own files). An IP-literal host is checked against ``policy`` at once; a name
    is checked when the source resolves it (:meth:`SourceUrl.check_destination`).
    """
    if not text:
        raise UrlRejected("empty", "the URL is empty; give rtsp://host[:port]/path")
    if len(text) > MAX_URL:
        raise UrlRejected("length", f"the URL is longer than {MAX_URL} characters")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    if match is None and kind == "scan":
        # A path on this machine, as typed on the command line: spaces and accents are
        # fine, control characters are not.
        if any(ch < " " or ch == "\x7f" for ch in text):
            raise UrlRejected("characters", "the path holds a control character")
        return SourceUrl(text=text, scheme="file", host=None, port=None, path=text)
    for i, ch in enumerate(text):
        if not "\x21" <= ch <= "\x7e":
            raise UrlRejected(
                "characters",
                f"the URL holds {ch!r} at position {i}; only printable ASCII is allowed "
                "(percent-encode spaces and other characters)",
            )
    if match is None:
        raise UrlRejected("scheme", f"the URL has no scheme; use {_allowed(kind, allow_file)}")
    scheme = match.group(1).lower()
    if scheme == "file":
        return _file_url(text, kind=kind, allow_file=allow_file)
    allowed = SCAN_SCHEMES if kind == "scan" else STREAM_SCHEMES
    if scheme not in allowed:
        raise UrlRejected(
            "scheme",
            f"unsupported URL scheme {scheme!r}; use {_allowed(kind, allow_file)}",
        )
    if not text[len(scheme) + 1 :].startswith("//"):
        raise UrlRejected("form", f"a {scheme} URL looks like {scheme}://host[:port]/path")
    parts = urlsplit(text)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and not userinfo:
        raise UrlRejected("userinfo", "the URL has an '@' with no user name before it")
    host = parts.hostname
    if not host or not hostport or hostport.startswith(":"):
        raise UrlRejected("host", f"the URL has no host; use {scheme}://host[:port]/path")
    try:
        port = parts.port
    except ValueError:
        raise UrlRejected(
            "port", f"the URL's port {hostport.rpartition(':')[2]!r} is not a number in 1..65535"
        ) from None
    if hostport.endswith(":") or port == 0:
        raise UrlRejected("port", "the URL's port is empty or 0; give a port in 1..65535")
    literal = _ip_literal(host)
    if literal is None and not _HOST.match(host):
        raise UrlRejected("host", f"host {host!r} is not a valid host name")
    if literal is not None and policy is not None:
        policy.check_address(str(literal), host)
    return SourceUrl(
        text=text,
        scheme=scheme,
        host=host,
        port=port,
        path=parts.path,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def redact(text: str) -> str:
    """Mask the password of any URL-like text; never raises (for logs of bad input)."""
    return re.sub(r"(//[^/@:\s]*:)[^/@\s]*@", r"\1***@", text)


def parse_nets(values: Sequence[str], setting: str) -> tuple[Network, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} in {setting} is not a CIDR network") from None
    return tuple(out)


def _file_url(text: str, *, kind: Kind, allow_file: bool) -> SourceUrl:
    if kind == "stream" and not allow_file:
        raise UrlRejected(
            "scheme", "file:// sources are disabled; set DFM_ALLOW_FILE_SOURCES=true to allow"
        )
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise UrlRejected("form", "file URLs look like file:///absolute/path.mp4")
    if parts.query or parts.fragment:
        raise UrlRejected("form", "file URLs take no '?' or '#' part")
    return SourceUrl(text=text, scheme="file", host=None, port=None, path=parts.path)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _allowed(kind: Kind, allow_file: bool) -> str:
    schemes = list(SCAN_SCHEMES if kind == "scan" else STREAM_SCHEMES)
    if allow_file or kind == "scan":
        schemes.append("file")
    return ", ".join(schemes)
