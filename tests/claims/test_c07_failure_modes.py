"""C7 failure-modes: kinematic and structural silent failures both occur in the zoo (SPEC §6)."""
from phantom import claims


def test_c7_failure_modes(zoo, judge):
    judge(claims.c7_failure_modes({c.model: c.sweep() for c in zoo}))
