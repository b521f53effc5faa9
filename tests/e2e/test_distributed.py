#!/usr/bin/env python3
"""End-to-end test of many processes, one job: `optima prune` started as two processes on this machine (Gloo over
the loopback interface) must write what one process writes, to within round-off, with only rank 0 writing, under
the torchrun-style variables (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT) and the srun-style ones (SLURM_PROCID/
SLURM_NTASKS with the host and port derived from SLURM's variables). A process that fails or never comes must not
leave the others waiting, and inconsistent variables are refused with clear messages. A job whose processes are all
sent SIGTERM (as SLURM does) stops at one block boundary with exit 75 on every process and resumes, with as many
processes, to the bytes of an uninterrupted job.

Standard library only; ctest runs it as `distributed` with the binary and the assets folder, and counts exit code
77 (this optima was built without Gloo) as skipped:
    python3 tests/e2e/test_distributed.py OPTIMA_BINARY [ASSETS_DIR]
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from resume_checks import assert_same_output
from safetensors_file import read_checkpoint

OPTIMA = None
ASSETS = None
EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_IO, EXIT_SUSPENDED = 0, 2, 3, 4, 75
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
# Tolerance of the comparison with the single-process output, relative to each tensor's largest magnitude. The two
# runs differ only in the order of fp32 sums: the pooled Hessian (sum_r n_r H_r / n instead of one running mean over
# all windows) and the row shares of the reconstruction. Measured: 5e-7 (SparseGPT + OPTIMA) and 9e-7 (Wanda 2:4 +
# OPTIMA), a few fp32 roundings amplified by the solves; 1e-4 leaves a margin of 100 for other CPUs' BLAS kernels
# and stays far below what a pruning decision changes (the weights that pruning zeroes or moves change by 1e-2 of the
# largest and more). The pruned weights themselves must be the same ones.
RELATIVE_TOLERANCE = 1e-4


def clean_environment(**extra):
    """This environment without launcher variables (CI may run under SLURM), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port(low=None, high=None):
    """A TCP port on the loopback interface that nothing listens on now (in [low, high) when given)."""
    for port in range(low, high) if low else [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high})")


class Distributed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ASSETS, "models", "stories260k")
        cls.calib = os.path.join(ASSETS, "text", "tinystories", "tiny.utf8")
        if not os.path.isdir(cls.model):
            raise unittest.SkipTest(f"asset missing: {cls.model}")
        cls.tmp = tempfile.TemporaryDirectory(prefix="optima-dist-")
        cls.work = cls.tmp.name
        cls.single_outputs = {}  # settings -> (folder, seconds) of a single-process run, shared by the tests

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def prune_args(self, out, *extra):
        # 7 windows: the shares of two processes differ in size (3 and 4).
        return [OPTIMA, "prune", "--model", self.model, "--out", out, "--calib", self.calib, "--nsamples", "7",
                "--seqlen", "96", *extra]

    def run_one(self, out, *extra):
        start = time.monotonic()
        result = subprocess.run(self.prune_args(out, *extra), capture_output=True, text=True, timeout=300,
                                env=clean_environment())
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        return time.monotonic() - start

    def single_output(self, settings):
        """The output of one process with `settings`, run once for all the tests that compare with it."""
        key = tuple(settings)
        if key not in self.single_outputs:
            out = os.path.join(self.work, f"single-{len(self.single_outputs)}")
            self.single_outputs[key] = (out, self.run_one(out, *settings))
        return self.single_outputs[key]

    @staticmethod
    def job_environments(world_size=2):
        port = free_port()
        return [clean_environment(RANK=r, WORLD_SIZE=world_size, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
                for r in range(world_size)]

    def run_job(self, envs, args, cwds=None, timeout=300):
        """Starts one process per environment and waits for all; returns their results and the wall time."""
        start = time.monotonic()
        processes = [subprocess.Popen(args, env=env, cwd=cwds[i] if cwds else None, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for i, env in enumerate(envs)]
        results = []
        try:
            for p in processes:
                stdout, stderr = p.communicate(timeout=timeout)
                results.append((p.returncode, stdout, stderr))
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return results, time.monotonic() - start

    def compare(self, single, many, label):
        """Every tensor of the two outputs agrees to RELATIVE_TOLERANCE; returns the largest differences."""
        a, b = read_checkpoint(single, exclude=()), read_checkpoint(many, exclude=())
        self.assertEqual(sorted(a), sorted(b))
        worst_abs = worst_rel = 0.0
        zeros_differ = 0
        for name in a:
            (_, dtype_a, shape_a, va), (_, dtype_b, shape_b, vb) = a[name], b[name]
            self.assertEqual((dtype_a, shape_a), (dtype_b, shape_b), name)
            if dtype_a != "F32":
                self.assertEqual(va, vb, name)
                continue
            scale = max(max(abs(x) for x in va), 1e-30)
            diff = max(abs(x - y) for x, y in zip(va, vb))
            zeros_differ += sum((x == 0.0) != (y == 0.0) for x, y in zip(va, vb))
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
            self.assertLessEqual(diff, RELATIVE_TOLERANCE * scale, f"{label}: {name}")
        # The same weights are pruned: round-off never turns a pruning decision around here.
        self.assertEqual(zeros_differ, 0, label)
        with open(os.path.join(single, "prune_report.json")) as f:
            one = json.load(f)
        with open(os.path.join(many, "prune_report.json")) as f:
            two = json.load(f)
        self.assertEqual((one["settings"]["world_size"], two["settings"]["world_size"]), (1, 2))
        self.assertIn("communicate", two["timings"])
        for x, y in zip(one["layers"], two["layers"]):
            self.assertEqual(x["name"], y["name"])
            self.assertAlmostEqual(x["sparsity"], y["sparsity"], places=9)
            self.assertAlmostEqual(x["error_final"], y["error_final"], delta=1e-4 * abs(x["error_final"]) + 1e-9)
            self.assertLess(y["kkt_residual"], 1e-8, y["name"])
        return worst_abs, worst_rel

    def test_interrupted_job_resumes_to_byte_identical_output(self):
        settings = ["--method", "sparsegpt", "--sparsity", "0.5", "--reconstruct", "optima", "--save-masks"]
        # Absolute outputs, seen alike by both processes: the work folder must be shared, as on a cluster.
        reference = os.path.join(self.work, "resume-reference")
        results, seconds_reference = self.run_job(self.job_environments(), self.prune_args(reference, *settings))
        for rank, (code, _, stderr) in enumerate(results):
            self.assertEqual(code, EXIT_OK, f"rank {rank}:\n{stderr}")
        out = os.path.join(self.work, "resumed")
        state_dir = out + ".resume"

        # SIGTERM to both processes once rank 0 finished block 0; activations spilled to disk (a 1-byte budget). They
        # stop at the end of the block in which the signal arrives: which one depends on how long this process takes to
        # read the line and signal (a block takes about 0.1 s here), so any block before the last is accepted.
        start = time.monotonic()
        args = [OPTIMA, "--log-level", "debug", *self.prune_args(out, *settings, "--activation-memory", "1")[1:]]
        processes = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for env in self.job_environments()]
        try:
            seen = []
            for line in processes[0].stderr:
                seen.append(line)
                if "block 0 done" in line:
                    for p in processes:
                        p.send_signal(signal.SIGTERM)
                    break
            messages = ["".join(seen) + processes[0].stderr.read(), processes[1].communicate(timeout=300)[1]]
            processes[0].wait(timeout=300)
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stderr.close()
        seconds_interrupted = time.monotonic() - start
        for rank, p in enumerate(processes):
            self.assertEqual(p.returncode, EXIT_SUSPENDED, f"rank {rank}:\n{messages[rank]}")
            self.assertIn("stopped by SIGTERM at the end of block", messages[rank])
            self.assertIn("--resume", messages[rank])
        self.assertIn("activations.rank-0.spill", messages[0])  # rank 1 logs only warnings
        self.assertFalse(os.path.exists(out), "nothing may appear under the output name")
        with open(os.path.join(state_dir, "state.json")) as f:
            state = json.load(f)
        # Both processes stopped at the same block's end, after block 0 and before the last (block 4).
        self.assertIn(state["next_block"], (1, 2, 3, 4))
        self.assertEqual(state["fingerprint"]["settings_json"]["world_size"], 2)
        shares = [f"activations-block-{state['next_block']:04d}.rank-{r}.safetensors" for r in range(2)]
        self.assertEqual(state["activations"], shares)
        for name in shares:
            self.assertIn(name, state["files"])
            self.assertEqual(os.path.getsize(os.path.join(state_dir, name)), state["files"][name]["bytes"])
        self.assertFalse([f for f in os.listdir(state_dir) if f.endswith(".spill")], "spill files are removed")

        # A job of another size is refused, and the state survives.
        result = subprocess.run(self.prune_args(out, *settings, "--resume"), capture_output=True, text=True,
                                timeout=300, env=clean_environment())
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn("a job of 2 processes", result.stderr)
        # A corrupt share is refused by the process it belongs to; the other stops with it.
        share = os.path.join(state_dir, shares[1])
        with open(share, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            original = f.read(1)
            f.seek(-5, os.SEEK_END)
            f.write(bytes([original[0] ^ 0xFF]))
        results, _ = self.run_job(self.job_environments(), self.prune_args(out, *settings, "--resume"))
        self.assertEqual(results[1][0], EXIT_INPUT, results[1][2])
        self.assertIn(share, results[1][2])
        self.assertIn("SHA-256", results[1][2])
        self.assertEqual(results[0][0], EXIT_IO, results[0][2])
        with open(share, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            f.write(original)
        self.assertTrue(os.path.isfile(os.path.join(state_dir, "state.json")))

        # Resumed by two processes to the end: byte-identical to the uninterrupted job.
        results, seconds_resumed = self.run_job(self.job_environments(),
                                                self.prune_args(out, *settings, "--resume"))
        for rank, (code, _, stderr) in enumerate(results):
            self.assertEqual(code, EXIT_OK, f"rank {rank}:\n{stderr}")
        self.assertIn(f"continuing at block {state['next_block']}", results[0][2])
        self.assertFalse(os.path.exists(state_dir), "a completed job removes its work folder")
        resumed_report, _ = assert_same_output(self, out, reference, "the uninterrupted job's")
        self.assertEqual(resumed_report["resumed_from_block"], state["next_block"])
        # And, as any two-process output, within round-off of one process's.
        single, _ = self.single_output(settings)
        worst_abs, worst_rel = self.compare(single, out, "resumed")
        print(f"\nresumed job: stopped after block {state['next_block'] - 1}, byte-identical to the uninterrupted "
              f"job; largest difference from one process {worst_abs:.3g} (relative {worst_rel:.3g}); uninterrupted "
              f"{seconds_reference:.1f} s, interrupted {seconds_interrupted:.1f} s, resumed {seconds_resumed:.1f} s",
              file=sys.stderr)

    def test_two_processes_write_what_one_writes(self):
        cases = [
            ("torchrun", "torchrun",
             ["--method", "sparsegpt", "--sparsity", "0.5", "--reconstruct", "optima", "--save-masks"]),
            ("srun", "srun", ["--method", "wanda", "--pattern", "2:4", "--reconstruct", "optima"]),
            # OWL's dense pass pools its statistics across the processes like the main pass.
            ("owl", "torchrun",
             ["--method", "wanda", "--sparsity", "0.7", "--sparsity-allocation", "owl", "--reconstruct", "optima"]),
        ]
        for label, launcher, settings in cases:
            with self.subTest(launcher=label):
                single, seconds_one = self.single_output(settings)
                ranks = [os.path.join(self.work, f"{label}-rank{r}") for r in range(2)]
                for d in ranks:
                    os.makedirs(d)
                if launcher == "torchrun":
                    port = free_port()
                    envs = [clean_environment(RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
                            for r in range(2)]
                else:
                    # srun's variables only: rank 0's host is the first of the step's nodes and the port is
                    # 29500 + SLURM_JOB_ID mod 1000.
                    port = free_port(29500, 30500)
                    envs = [clean_environment(SLURM_PROCID=r, SLURM_NTASKS=2, SLURM_STEP_NODELIST="localhost",
                                              SLURM_JOB_ID=1000 + port - 29500) for r in range(2)]
                # Each process runs in its own folder with the same relative --out: what rank 1 writes would land
                # in its folder.
                results, seconds_two = self.run_job(envs, self.prune_args("out", *settings), cwds=ranks)
                for rank, (code, stdout, stderr) in enumerate(results):
                    self.assertEqual(code, EXIT_OK, f"rank {rank}:\n{stderr}")
                self.assertIn("overall sparsity", results[0][1])
                self.assertEqual(results[1][1], "", "rank 1 prints no summary")
                self.assertEqual(os.listdir(ranks[1]), [], "rank 1 must write nothing")
                worst_abs, worst_rel = self.compare(single, os.path.join(ranks[0], "out"), label)
                with open(os.path.join(single, "prune_report.json")) as f:
                    one = json.load(f)["sparsity_allocation"]
                with open(os.path.join(ranks[0], "out", "prune_report.json")) as f:
                    two = json.load(f)["sparsity_allocation"]
                self.assertEqual(one.get("outlier_ratio"), two.get("outlier_ratio"), label)
                for a, b in zip(one.get("block_sparsity", []), two.get("block_sparsity", [])):
                    self.assertAlmostEqual(a, b, delta=1e-12, msg=label)
                print(f"\n{launcher}: {' '.join(settings)}: largest difference from one process {worst_abs:.3g} "
                      f"(relative to the tensor's largest weight {worst_rel:.3g}); one process {seconds_one:.1f} s, "
                      f"two {seconds_two:.1f} s", file=sys.stderr)

    def test_a_failed_or_missing_process_stops_the_others(self):
        # Rank 0 refuses an existing output after joining; rank 1 must then stop, not wait for the timeout.
        out = os.path.join(self.work, "exists")
        os.makedirs(out)
        port = free_port()
        envs = [clean_environment(RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
        results, seconds = self.run_job(envs, self.prune_args(out, "--method", "wanda", "--dist-timeout", "120"))
        self.assertEqual(results[0][0], EXIT_USAGE, results[0][2])
        self.assertIn("--overwrite", results[0][2])
        self.assertEqual(results[1][0], EXIT_IO, results[1][2])
        self.assertIn("rank 1 of 2", results[1][2])
        self.assertLess(seconds, 60)
        # A job whose rank 0 never comes: rank 1 gives up after --dist-timeout.
        envs = [clean_environment(RANK=1, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())]
        results, seconds = self.run_job(envs, self.prune_args(os.path.join(self.work, "alone"), "--dist-timeout", "3"))
        self.assertEqual(results[0][0], EXIT_IO, results[0][2])
        self.assertIn("rank 1 of 2", results[0][2])
        self.assertIn("rendezvous", results[0][2])
        self.assertLess(seconds, 60)
        self.assertFalse(os.path.exists(os.path.join(self.work, "alone")))

    def test_inconsistent_launches_are_refused(self):
        out = os.path.join(self.work, "refused")
        cases = [
            (dict(RANK=0), "RANK and WORLD_SIZE go together"),
            (dict(RANK=2, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500), "RANK: expected an integer"),
            (dict(RANK=0, WORLD_SIZE=2), "MASTER_ADDR and MASTER_PORT"),
            (dict(SLURM_PROCID=0, SLURM_NTASKS=2), "no host for rank 0"),
        ]
        for env, message in cases:
            result = subprocess.run(self.prune_args(out, "--method", "wanda"), capture_output=True, text=True,
                                    timeout=60, env=clean_environment(**env))
            self.assertEqual(result.returncode, EXIT_USAGE, f"{env}: {result.stderr}")
            self.assertIn(message, result.stderr)
        # A sweep is many settings, not many processes.
        result = subprocess.run(self.prune_args(out, "--method", "wanda,magnitude"), capture_output=True, text=True,
                                timeout=60, env=clean_environment(RANK=0, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                                                                  MASTER_PORT=29500))
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn("job array", result.stderr)
        # Processes started with different settings find out before exchanging anything.
        port = free_port()
        envs = [clean_environment(RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
        processes = [subprocess.Popen(self.prune_args(out, "--method", "wanda", "--sparsity", s), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for env, s in zip(envs, ("0.5", "0.6"))]
        for p in processes:
            _, stderr = p.communicate(timeout=120)
            self.assertEqual(p.returncode, EXIT_USAGE, stderr)
            self.assertIn("different prune settings", stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    # Absolute: the processes of a job run in folders of their own.
    ASSETS = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..",
                                                                                 "..", "shared", "assets"))
    version = subprocess.run([OPTIMA, "--version"], capture_output=True, text=True).stdout
    if "gloo" not in version:
        print(f"skipped: this optima has no Gloo backend ({version.strip()})")
        sys.exit(77)
    unittest.main(argv=[sys.argv[0], "-v"])
