"""The confinement's pure parts: its description and the seccomp program (the kernel parts are
tested end to end in test/sandbox.test.ts and test/reliability/attacks.test.ts)."""
from __future__ import annotations

import json
import os
import struct
import unittest
from unittest import mock

from shaker import sandbox


class ConfinementTest(unittest.TestCase):
    def test_reads_the_executor_description_and_ignores_unknown_fields(self) -> None:
        raw = json.dumps({"enabled": True, "binds": ["/usr"], "tmp_bytes": 1024, "worker_slot": 2, "future": 1,
                          "as_root": "not from the environment"})
        with mock.patch.dict(os.environ, {"SHAKER_CONFINEMENT": raw}):
            conf = sandbox.Confinement.from_env()
        self.assertTrue(conf.enabled)
        self.assertEqual((conf.binds, conf.tmp_bytes, conf.worker_slot), (["/usr"], 1024, 2))
        self.assertEqual(conf.as_root, os.geteuid() == 0)

    def test_unset_means_unconfined(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertFalse(sandbox.Confinement.from_env().enabled)

    def test_run_uids_of_workers_never_overlap(self) -> None:
        a = sandbox.Confinement(worker_slot=0)
        b = sandbox.Confinement(worker_slot=1)
        self.assertLess(sandbox.run_uid(a, a.uid_stride - 1), sandbox.run_uid(b, 0))

    def test_a_non_root_run_gets_a_user_namespace(self) -> None:
        self.assertFalse(sandbox.Confinement(as_root=True).run_flags() & sandbox.CLONE_NEWUSER)
        self.assertTrue(sandbox.Confinement(as_root=False).run_flags() & sandbox.CLONE_NEWUSER)

    def test_binds_include_this_interpreter(self) -> None:
        import sys
        binds = sandbox.effective_binds(sandbox.Confinement(binds=["/usr", "/no/such/path"]))
        self.assertIn(os.path.normpath(sys.prefix), binds)
        self.assertNotIn("/no/such/path", binds)
        self.assertEqual(len(binds), len(set(binds)))


@unittest.skipIf(sandbox.ARCH is None, "no syscall table for this architecture")
class SeccompProgramTest(unittest.TestCase):
    def run_filter(self, nr: int, arch: int | None = None, arg0: int = 0) -> int:
        """Interprets the program for one system call, as the kernel would."""
        data = struct.pack("=iIQ6Q", nr, arch if arch is not None else sandbox.ARCH["audit"], 0, arg0, 0, 0, 0, 0, 0)
        prog = sandbox.seccomp_program()
        insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
        pc, acc = 0, 0
        while True:
            code, jt, jf, k = insns[pc]
            if code == 0x20:
                acc = struct.unpack_from("=I", data, k)[0]
                pc += 1
            elif code == 0x06:
                return k
            else:
                taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
                pc += 1 + (jt if taken else jf)

    def test_denies_what_a_workflow_never_needs(self) -> None:
        for name in ("ptrace", "process_vm_readv", "mount", "umount2", "unshare", "setns", "keyctl", "bpf"):
            self.assertEqual(self.run_filter(sandbox.ARCH["deny"][name]), 0x00050001, name)

    def test_allows_the_rest(self) -> None:
        self.assertEqual(self.run_filter(0), 0x7FFF0000)  # read on x86_64, io_setup on aarch64: allowed alike

    def test_clone_with_a_namespace_flag_is_denied_and_a_plain_fork_allowed(self) -> None:
        clone = sandbox.ARCH["clone"]
        self.assertEqual(self.run_filter(clone, arg0=17), 0x7FFF0000)
        self.assertEqual(self.run_filter(clone, arg0=17 | sandbox.CLONE_NEWUSER), 0x00050001)
        self.assertEqual(self.run_filter(sandbox.ARCH["clone3"]), 0x00050000 | 38)

    def test_kills_another_architecture(self) -> None:
        self.assertEqual(self.run_filter(0, arch=0x40000003), 0x80000000)


if __name__ == "__main__":
    unittest.main()
