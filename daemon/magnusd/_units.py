"""systemd unit files (the single source of `systemd/`) and `magnusd install-units`.

Two pairs: **user** (socket at `%t/magnus/magnusd.sock`, the default socket of a user's
clients) and **system** (socket `/run/magnus/magnusd.sock`, mode 0660 for the group `magnus`,
a dynamic user, state in `/var/lib/magnus`, config in `/etc/magnus`). The socket unit owns the
socket file, outside any `RuntimeDirectory=` (systemd would delete it when the service stops),
so the first connection after boot waits in the socket's backlog until the daemon is ready.

`Type=notify-reload` needs systemd 253 or newer. With an older systemd, use `Type=notify` and
`ExecReload=/bin/kill -HUP $MAINPID` (the daemon reloads on SIGHUP either way); install-units
does that by itself when `systemctl --version` reports an older systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

DEFAULT_EXEC = "/usr/local/bin/magnusd"

USER_SOCKET = """\
[Unit]
Description=magnus tracking daemon socket

[Socket]
ListenStream=%t/magnus/magnusd.sock
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""

USER_SERVICE = """\
[Unit]
Description=magnus tracking daemon
Requires=magnusd.socket
After=magnusd.socket

[Service]
Type=notify-reload
ExecStart={exec} serve --socket %t/magnus/magnusd.sock
NotifyAccess=main
WatchdogSec=30
Restart=on-failure
# the drain: trackers (10 s) and the run store (20 s) catch up before exit
TimeoutStopSec=60
UMask=0077
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service

[Install]
WantedBy=default.target
"""

SYSTEM_SOCKET = """\
[Unit]
Description=magnus tracking daemon socket

[Socket]
ListenStream=/run/magnus/magnusd.sock
SocketUser=root
SocketGroup=magnus
SocketMode=0660
DirectoryMode=0755

[Install]
WantedBy=sockets.target
"""

SYSTEM_SERVICE = """\
[Unit]
Description=magnus tracking daemon
Requires=magnusd.socket
After=magnusd.socket network-online.target
Wants=network-online.target

[Service]
Type=notify-reload
ExecStart={exec} serve --socket /run/magnus/magnusd.sock
NotifyAccess=main
WatchdogSec=30
Restart=on-failure
TimeoutStopSec=60
DynamicUser=yes
SupplementaryGroups=magnus
StateDirectory=magnus
StateDirectoryMode=0750
ConfigurationDirectory=magnus
# Who may connect is decided by the socket's mode and group (any uid in the group magnus).
Environment=MAGNUS_DATA_DIR=%S/magnus MAGNUS_CONFIG=%E/magnus/config.yaml MAGNUS_ALLOW_UIDS=*
UMask=0077
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
# trackers reach their servers over the network; the socket is AF_UNIX
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources

[Install]
WantedBy=multi-user.target
"""


def render(scope: str, exec_path: str = DEFAULT_EXEC, notify_reload: bool = True
           ) -> dict[str, str]:
    """{file name: text} of one pair."""
    service = USER_SERVICE if scope == "user" else SYSTEM_SERVICE
    socket_unit = USER_SOCKET if scope == "user" else SYSTEM_SOCKET
    service = service.format(exec=exec_path)
    if not notify_reload:
        service = service.replace("Type=notify-reload\n",
                                  "Type=notify\nExecReload=/bin/kill -HUP $MAINPID\n")
    return {"magnusd.socket": socket_unit, "magnusd.service": service}


def systemd_version() -> int | None:
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else None


def this_magnusd() -> str:
    """The real path of this installation's `magnusd`."""
    here = os.path.join(os.path.dirname(sys.executable), "magnusd")
    found = here if os.path.exists(here) else shutil.which("magnusd") or sys.argv[0]
    return os.path.realpath(found) if os.path.basename(found) == "magnusd" else found


def install(scope: str, dry_run: bool, target: str | None = None) -> str:
    """Write (or print) the units; return what to tell the user."""
    version = systemd_version()
    units = render(scope, this_magnusd(), notify_reload=version is None or version >= 253)
    if target is None:
        target = (os.path.expanduser("~/.config/systemd/user") if scope == "user"
                  else "/etc/systemd/system")
    ctl = "systemctl --user" if scope == "user" else "systemctl"
    if dry_run:
        return "".join(f"# {os.path.join(target, name)}\n{text}\n" for name, text in units.items())
    os.makedirs(target, exist_ok=True)
    for name, text in units.items():
        with open(os.path.join(target, name), "w") as f:
            f.write(text)
    steps = [f"{ctl} daemon-reload", f"{ctl} enable --now magnusd.socket"]
    if scope == "system":
        steps.insert(0, "groupadd --system magnus   # then add the users who may track: "
                        "usermod -aG magnus USER")
    note = "" if version is None or version >= 253 else (
        f"\n(systemd {version} < 253: the service uses Type=notify with ExecReload=kill -HUP)")
    return (f"wrote {', '.join(units)} to {target}{note}\nnext:\n"
            + "".join(f"  {s}\n" for s in steps))
