"""The summary table of gpu_acceptance.sh: its checks, and our speed against the targets of
issue 34 and llama.cpp's figures (measured on this machine by llama_cpp_gpu.sh when it ran,
and the issue's H100 figures). Exit status 1 if a check failed or a target was missed.

    python3 gpu_summary.py results.jsonl [--no-speed]

`--no-speed` (QUICK=1 runs): the checks only, no speed table.
"""

import json
import sys

# (metric, weight type, batch, field, target tokens/s, llama.cpp on an H100 per the issue,
#  llama.cpp test name)
TARGETS = [
    ("decode, batch 1", "q4_0", 1, "decode_tok_s", 600, 343, "tg128"),
    ("decode, batch 1", "q8_0", 1, "decode_tok_s", 350, 192, "tg128"),
    ("pp512", "q4_0", 1, "prefill_tok_s", 15000, 11500, "pp512"),
    ("decode, 64 streams", "q4_0", 64, "decode_tok_s", 5000, 3167, "tg_b64"),
    ("pp512", "q8_0", 1, "prefill_tok_s", None, None, "pp512"),
    ("decode, 64 streams", "q8_0", 64, "decode_tok_s", None, None, "tg_b64"),
]


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    failed = False
    print("| check | status | detail |")
    print("| --- | --- | --- |")
    for r in rows:
        c = r["check"]
        if c.startswith("speed") or c.startswith("llama.cpp"):
            continue
        d = r.get("data") or {}
        detail = ""
        if c == "gpu":
            detail = d.get("name", "")
        elif c == "bandwidth":
            detail = f'{d.get("bandwidth", {}).get("gb_s", "?")} GB/s (copy, read + write)'
        elif c.startswith("parity") and "parity" in d:
            p = d["parity"]
            detail = (
                f'{p["greedy_tokens_equal"]}/{p["greedy_tokens"]} greedy tokens, '
                f'max logit diff {p["max_logit_diff"]} of spread {p["logit_spread"]}'
            )
        print(f'| {c} | {r["status"]} | {detail} |')
        failed |= r["status"] != "ok"

    ours = {}
    for r in rows:
        if r["check"].startswith("speed") and r.get("data"):
            t = r["check"].split()[1]
            d = r["data"]
            ours[(t, d["batch"])] = d["ours"]
    ref = {}
    for r in rows:
        if r["check"].startswith("llama.cpp") and r.get("data"):
            ref[(r["check"].split()[1], r["data"]["test"])] = r["data"]["tok_s"]

    if "--no-speed" in sys.argv:
        print()
        print("RESULT:", "FAIL" if failed else "PASS", "(checks only)")
        sys.exit(1 if failed else 0)
    print()
    print("| Llama-2-7B shape | type | ours tok/s | target | llama.cpp here | llama.cpp (issue, H100) | ours / llama.cpp | met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, t, batch, field, target, issue, test in TARGETS:
        got = ours.get((t, batch), {}).get(field)
        here = ref.get((t, test))
        base = here if here else issue
        ratio = f"{got / base:.2f}" if got and base else "-"
        met = "-" if target is None else ("yes" if got and got >= target else "NO")
        if target is not None and met != "yes":
            failed = True
        fmt = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "-"
        print(
            f"| {name} | {t} | {fmt(got)} | {fmt(target)} | {fmt(here)} | {fmt(issue)} | {ratio} | {met} |"
        )
    print()
    print("RESULT:", "FAIL" if failed else "PASS")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
