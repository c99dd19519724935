"""Waiting for conditions rather than sleeping, shared by the check scripts."""
import time
import urllib.request


def wait_for(cond, what, timeout=20, every=0.1):
    """Polls `cond` until it holds; fails saying `what` did not happen in time."""
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(every)


def housekeeping_runs(web):
    page = urllib.request.urlopen(web + "/metrics").read().decode()
    for line in page.splitlines():
        if line.startswith("magnetar_housekeeping_runs_total "):
            return int(line.split()[1])
    raise AssertionError("no housekeeping counter in /metrics")


def wait_housekeeping(web, n):
    """Waits until n more housekeeping passes have completed."""
    target = housekeeping_runs(web) + n
    wait_for(lambda: housekeeping_runs(web) >= target, "%d housekeeping passes" % n)
