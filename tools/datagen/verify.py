#!/usr/bin/env python3
"""Verify a transition-state candidate with the generator's acceptance test.

usage: verify.py TS.xyz REACT.xyz PROD.xyz [--prfo]

Computes the xtb Hessian at TS.xyz and applies the same checks as the
generator: exactly one imaginary frequency below -50 cm^-1 (no other below
-20 cm^-1); +/- displacement along it and xtb minimisation must reach the
reactant's exact bonding (REACT.xyz) and the product's bonding up to
isomorphism (PROD.xyz).  All three files must share the atom order.
With --prfo a P-RFO saddle search is run from TS.xyz first.

Prints ACCEPT or REJECT <stage>: <reason>; exit status 0 when accepted,
1 when rejected, 2 on usage or xtb errors.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import chem       # noqa: E402
import tssearch   # noqa: E402
import xtbrun     # noqa: E402


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 3:
        sys.stderr.write(__doc__)
        return 2
    syms, xts, _ = chem.read_xyz(args[0])
    s_r, xr, _ = chem.read_xyz(args[1])
    s_p, xp, _ = chem.read_xyz(args[2])
    if not (syms == s_r == s_p):
        print("REJECT input: atom order or elements differ between the files")
        return 1
    rb = chem.bonds_from_xyz(syms, xr)
    ph = chem.graph_hash(syms, chem.bonds_from_xyz(syms, xp))
    try:
        if "--prfo" in argv:
            sv = tssearch.search_and_verify(syms, xts, rb, ph)
        else:
            sv = tssearch.verify_as_given(syms, xts, rb, ph)
        v = sv["verify"]
        if v is None:       # no saddle to test: P-RFO not converged, or not stationary
            print("REJECT %s: %s" % (sv["stage"], sv["reason"]))
            return 1
    except xtbrun.XtbError as exc:
        print("ERROR xtb: %s" % exc)
        return 2
    lows = ", ".join("%.1f" % f for f in v["freqs"][:3])
    if v["ok"]:
        print("ACCEPT imaginary frequency %.1f cm-1 (lowest: %s)" % (v["freqs"][0], lows))
        return 0
    print("REJECT %s: %s (lowest frequencies: %s)" % (v["stage"], v["reason"], lows))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
