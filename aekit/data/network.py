"""Whether TFDS's download host answers: a short probe, so an offline machine never sits through TFDS's retries."""

from __future__ import annotations

import os
import socket
import threading

# Where TFDS fetches MNIST from; probing it with a short timeout keeps an offline
# machine from sitting through TFDS's ~200 s of download retries.
TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
NETWORK_PROBE_SECONDS = 3.0
OFFLINE_ENV = "AEKIT_OFFLINE"


def network_reachable(address: tuple[str, int] = TFDS_DOWNLOAD_HOST, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """True when a TCP connection to `address` opens within `timeout` seconds.

    Runs in a daemon thread so a hanging DNS lookup cannot stall the caller.
    """
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return False
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]
