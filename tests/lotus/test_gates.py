"""Validity gates: a defense claim is judged only when the defense first removes (or flags) BadNets."""

import copy

from test_cli_repro import _seed_record

from cvpr24.lotus import reproduce


def _with_badnets_ft(asr, ba, seeds=3):
    recs = [copy.deepcopy(_seed_record()) for _ in range(seeds)]
    for r in recs:
        r["badnets"]["ft"] = {"asr": asr, "ba": ba}
    return recs


def test_c4_not_tested_when_ft_leaves_badnets_in_place():
    # the vacuous case: BadNets also keeps ASR 1.0 after the same fine-tuning
    c4 = reproduce.judge(_with_badnets_ft(asr=1.0, ba=0.98))[3]
    assert c4.status == "not tested" and "precondition" in c4.notes and "[1.0, 1.0, 1.0]" in c4.notes


def test_c4_not_tested_when_ft_removes_badnets_only_by_breaking_the_model():
    # ASR gone but 10 accuracy points lost (0.985 -> 0.885): not a working defense
    assert reproduce.judge(_with_badnets_ft(asr=0.0, ba=0.885))[3].status == "not tested"


def test_c4_judged_when_ft_removes_badnets():
    recs = _with_badnets_ft(asr=0.1, ba=0.97)
    c4 = reproduce.judge(recs)[3]
    assert c4.status == "passed" and "validity gate passed" in c4.notes
    for r in recs:
        r["lotus"]["ft"]["asr"] = 0.1                    # LOTUS removed too: resilience fails
    assert reproduce.judge(recs)[3].status == "failed"


def test_defense_gates_cover_the_full_table():
    recs = _with_badnets_ft(asr=0.1, ba=0.97)
    for r in recs:
        r["badnets"]["defenses"] = {"fp": {"asr": 0.05, "ba": 0.96}, "nad": {"asr": 0.9, "ba": 0.97},
                                    "anp": {"asr": 0.0, "ba": 0.5}, "strip": {"detected": True}}
    gates = reproduce.defense_gates(recs)
    assert {k: g["valid"] for k, g in gates.items()} == {"ft": True, "fp": True, "nad": False, "anp": False,
                                                         "strip": True}
    no_table = _with_badnets_ft(0.1, 0.97)
    for r in no_table:
        del r["badnets"]["defenses"], r["lotus"]["defenses"]
    assert set(reproduce.defense_gates(no_table)) == {"ft"}
    # C5..C7 (FP, NAD, ANP) need their own table rows: without them they are not tested
    assert [c.status for c in reproduce.judge(no_table)[4:]] == ["not tested"] * 3


def test_each_defense_claim_is_judged_against_its_own_gate():
    recs = _with_badnets_ft(asr=0.1, ba=0.97)
    for r in recs:
        r["badnets"]["defenses"]["nad"] = {"asr": 0.9, "ba": 0.97}     # NAD leaves BadNets in place
        r["lotus"]["defenses"]["fp"] = {"asr": 0.0, "ba": 0.98}        # FP removes LOTUS
    c4, c5, c6, c7 = reproduce.judge(recs)[3:]
    assert (c4.status, c5.status, c6.status, c7.status) == ("passed", "failed", "not tested", "passed")
    assert "nad removes" in c6.notes and "[0.9, 0.9, 0.9]" in c6.notes
