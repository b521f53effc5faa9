"""Checks shared by the end-to-end tests of interrupted and resumed runs (test_prune.py, test_distributed.py)."""
import json
import os


def untimed(layers):
    """Per-layer report entries without their timings, which differ from run to run."""
    return [{k: v for k, v in layer.items() if not k.startswith("seconds")} for layer in layers]


def assert_same_output(test, out, reference, whose):
    """Asserts that the output folder `out` holds the files of `reference`, each byte-identical but
    prune_report.json, whose per-layer entries agree apart from timings; `whose` names the reference in messages.
    Returns (the report of `out`, the report of `reference`)."""
    test.assertEqual(sorted(os.listdir(out)), sorted(os.listdir(reference)))
    for name in os.listdir(out):
        if name == "prune_report.json":
            continue
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(reference, name), "rb") as b:
            test.assertTrue(a.read() == b.read(), f"{name} differs from {whose}")
    with open(os.path.join(out, "prune_report.json")) as f:
        report = json.load(f)
    with open(os.path.join(reference, "prune_report.json")) as f:
        reference_report = json.load(f)
    test.assertEqual(untimed(report["layers"]), untimed(reference_report["layers"]))
    return report, reference_report
