"""One line of key figures for a step of bench/gpu_check.sh: `python bench/gpu_check_figure.py
STEP LOG WORKDIR`.  Reads the step's log and what it wrote; prints '' when it finds nothing."""
import json
import os
import re
import sys


def _last(pattern, text):
    found = re.findall(pattern, text, re.M)
    return found[-1] if found else None


def figure(step: str, log: str, work: str) -> str:
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    if step == "nvidia-smi":
        gpu = _last(r"\|\s+\d+\s+(NVIDIA [^|]*?)\s{2,}", text)
        driver = _last(r"Driver Version:\s*(\S+)", text)
        return f"{gpu or '?'}, driver {driver or '?'}"
    if step == "env":
        return " ".join(_last(r"^python .*$", text).split()) if _last(r"^python .*$", text) else ""
    if step == "check":
        rows = re.findall(r"^\s+(\S.*?)\s+(available|unavailable):", text, re.M)
        return ", ".join(f"{name.strip()}: {state}" for name, state in rows) + \
            ("; " + _last(r"^launch configurations: (.*)$", text) if
             _last(r"^launch configurations: (.*)$", text) else "")
    if step == "numerics":
        line = _last(r"^(\d+ passed, \d+ failed)$", text) or ""
        bad = re.findall(r"^\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+(FAILED|ERROR).*$", text,
                         re.M)
        return line + ("; failing: " + ", ".join(" ".join(b[:4]) for b in bad[:6])
                       if bad else "")
    if step == "bench":
        path = os.path.join(work, "bench", "results.json")
        if not os.path.exists(path):
            return "no results.json"
        rows = json.load(open(path))["rows"]
        ok = [r for r in rows if r["status"] == "ok"]
        parts = [f"{len(ok)} ok of {len(rows)} rows"]
        for r in ok:
            if r["provider"] == "fastattn" and r["family"] == "attention" and \
                    r["params"].get("length") == 512 and r["speedup_vs_torch"]:
                parts.append(f"{r['mode']} {r['params'].get('mask')}: x{r['speedup_vs_torch']:.2f}"
                             " vs sdpa")
        return "; ".join(parts[:5])
    if step == "tune":
        return _last(r"^(?:fastattn )?tune(?: --dry-run)?: (.*)$", text) or ""
    if step.startswith("tests"):
        return _last(r"=+ (.*(?:passed|failed|error|skipped).*?) =+$", text) or \
            _last(r"^(\d+ (?:passed|failed).*)$", text) or ""
    if step == "build_ext":
        so = [f for f in os.listdir("fastattn") if f.startswith("_C") and f.endswith(".so")]
        return f"built {so[0]}" if so else "no fastattn/_C*.so"
    return ""


if __name__ == "__main__":
    try:
        print(figure(*sys.argv[1:4])[:300])
    except Exception as exc:  # a figure is a convenience: never fail the step for it
        print(f"(no figure: {type(exc).__name__})")
