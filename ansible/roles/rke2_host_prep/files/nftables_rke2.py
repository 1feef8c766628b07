#!/usr/bin/python3
"""Open RKE2's ports in an active nftables ruleset, or remove them again (installed by the RKE2 portal).

``apply PORTS_FILE``: PORTS_FILE holds ``[{"protocol": "tcp", "spec": "6443/tcp", ...}]``. Every base chain hooked
on input whose policy is drop, or whose last rule drops or rejects everything, gets one accept rule per protocol at
its head, commented ``rke2-portal``; rules of an earlier run are replaced. ``remove``: deletes every rule with that
comment. Prints ``{"changed": bool, "chains": [...]}``.
"""

import json
import subprocess
import sys

COMMENT = "rke2-portal"


def nft(*args, output=True):
    done = subprocess.run(["nft", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["nftables"] if output else None


def ours():
    rules = []
    for item in nft("-j", "list", "ruleset"):
        rule = item.get("rule")
        if rule and rule.get("comment") == COMMENT:
            rules.append(rule)
    return rules


def signature(rules):
    return sorted((r["family"], r["table"], r["chain"], json.dumps(r["expr"], sort_keys=True)) for r in rules)


def closing_chains():
    ruleset = nft("-j", "list", "ruleset")
    last_verdict = {}
    for item in ruleset:
        rule = item.get("rule")
        if rule:
            key = (rule["family"], rule["table"], rule["chain"])
            exprs = rule.get("expr", [])
            last_verdict[key] = len(exprs) == 1 and ("drop" in exprs[0] or "reject" in exprs[0])
    chains = []
    for item in ruleset:
        chain = item.get("chain")
        if not chain or chain.get("hook") != "input" or chain.get("type") != "filter":
            continue
        key = (chain["family"], chain["table"], chain["name"])
        if chain.get("family") not in ("inet", "ip", "ip6"):
            continue
        if chain.get("policy") == "drop" or last_verdict.get(key):
            chains.append(key)
    return chains


def remove(rules):
    for rule in rules:
        nft("delete", "rule", rule["family"], rule["table"], rule["chain"], "handle", str(rule["handle"]), output=False)


def main():
    before = ours()
    remove(before)
    chains = []
    if sys.argv[1] == "apply":
        with open(sys.argv[2], encoding="utf-8") as handle:
            ports = json.load(handle)
        by_protocol = {}
        for port in ports:
            by_protocol.setdefault(port["protocol"], []).append(port["spec"].split("/")[0])
        chains = closing_chains()
        for family, table, chain in chains:
            for protocol, specs in sorted(by_protocol.items(), reverse=True):
                rule = f"meta l4proto {protocol} th dport {{ {', '.join(specs)} }} accept comment \"{COMMENT}\""
                nft("insert", "rule", family, table, chain, rule, output=False)
    after = ours()
    print(json.dumps({"changed": signature(before) != signature(after), "chains": [list(c) for c in chains]}))


if __name__ == "__main__":
    main()
