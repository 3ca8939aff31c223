"""The reproduction keeps each seed's measurements as it goes, reports partial results, resumes."""

import json

import pytest

from cvpr24.common.result import Result
from cvpr24.lotus import reproduce


def test_interrupted_run_leaves_a_partial_result_and_resumes(tmp_path, monkeypatch):
    measure = reproduce.measure_seed

    def stop_at_seed1(seed, *args):
        if seed == 1:
            raise KeyboardInterrupt          # the budget ran out / the user pressed Ctrl-C
        return measure(seed, *args)

    monkeypatch.setattr(reproduce, "measure_seed", stop_at_seed1)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run(tmp_path, quick=True, seeds=2, tiny=True)
    partial = Result.load(tmp_path / "partial.json")
    assert partial.partial and partial.seeds == [0] and len(partial.claims) == len(reproduce.CLAIMS)
    assert (tmp_path / "seeds" / "seed0.json").is_file() and not (tmp_path / "seeds" / "seed1.json").exists()

    def seed0_is_reused(seed, *args):
        assert seed != 0, "seed 0 was measured again instead of reused"
        return measure(seed, *args)

    monkeypatch.setattr(reproduce, "measure_seed", seed0_is_reused)
    r = reproduce.run(tmp_path, quick=True, seeds=2, tiny=True)
    assert r.seeds == [0, 1] and not r.partial
    m = json.loads((tmp_path / "measurements.json").read_text())
    assert m[0] == json.loads((tmp_path / "seeds" / "seed0.json").read_text())
    assert set(json.loads((tmp_path / "defense_gates.json").read_text())) == {"ft", "fp", "nad", "anp", "strip"}
