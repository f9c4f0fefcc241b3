"""Starts a command (the server) where the kernel refuses namespaces, as a container runtime's default
seccomp profile does: the harness's own filter, installed on this process and so on everything it
starts, denies unshare, setns and clone with a namespace flag. Usage: python3 no-namespaces.py CMD ARGS..."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../services/executor/harness"))
from shaker import sandbox  # noqa: E402

sandbox._prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
sandbox.install_seccomp()
os.execvp(sys.argv[1], sys.argv[1:])
