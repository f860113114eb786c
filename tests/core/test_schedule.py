"""Schedule files: what they hold, how strictly they are read, and the PPTConfig they give."""
import argparse
import json

import pytest

from ppt_cli.options import add_model_args, add_ppt_args
from ppt_common.config import PPTConfig, get_arch
from ppt_common.errors import UsageError
from ppt_common.macs import gmacs
from ppt_common.options import EvalOptions, ppt_config
from ppt_common.schedule import (config_from_settings, load_schedule, make_schedule, save_schedule,
                                 schedule_config)

TINY = "deit_tiny_patch16_224"
BLOCKS = [(2, 30, 1.0), (5, 20, 0.0), (8, 25, 7e-5)]


def schedule(**changes):
    s = make_schedule(TINY, BLOCKS, target_gmacs=1.0, search={"images": 8}, scores={"kl": 0.1})
    s.update(changes)
    return s


def test_round_trip_gives_the_per_block_config_and_its_macs(tmp_path):
    path = str(tmp_path / "s.json")
    save_schedule(path, schedule())
    loaded = load_schedule(path, TINY)
    assert loaded == schedule()
    cfg = schedule_config(loaded)
    assert cfg == PPTConfig(r=(30, 20, 25), pp_loc_list=(2, 5, 8), threshold=(1.0, 0.0, 7e-5))
    assert round(gmacs(get_arch(TINY), cfg), 6) == loaded["gmacs"] == 0.968059  # what eval_ms.py reports
    assert load_schedule(path) == loaded  # with no --model given, the file's own


def blocks(*rows):
    return [dict(zip(("block", "r", "threshold"), row)) for row in rows]


@pytest.mark.parametrize("changes, message", [
    (dict(blocks=blocks((12, 10, 0.0))), "block 12 is not one of deit_tiny_patch16_224's blocks 0..11"),
    (dict(blocks=blocks((-1, 10, 0.0))), "block -1 is not one of"),
    (dict(blocks=blocks((5, 10, 0.0), (3, 10, 0.0))), "in increasing order (block 3 after 5)"),
    (dict(blocks=blocks((5, 10, 0.0), (5, 10, 0.0))), "listed once each"),
    (dict(blocks=blocks((0, 99, 0.0))), "block 0: r=99 is more than it can remove from the 197 tokens it sees "
                                        "(at most 98)"),
    (dict(blocks=blocks((0, 90, 0.0), (1, 60, 0.0))), "block 1: r=60 is more than it can remove from the 107 "
                                                      "tokens it sees (at most 53)"),
    (dict(blocks=blocks((3, 0, 0.0))), "block 3: r must be an integer >= 1, got 0"),
    (dict(blocks=blocks((3, 2.5, 0.0))), "r must be an integer >= 1, got 2.5"),
    (dict(blocks=blocks((3, 10, -1e-5))), "block 3: threshold must be a finite number >= 0, got -1e-05"),
    (dict(blocks=blocks((3, 10, float("nan")))), "threshold must be a finite number >= 0, got nan"),
    (dict(blocks=[{"block": 3, "r": 10, "threshold": 0.0, "tau": 1}]), "exactly the keys block, r, threshold"),
    (dict(budget=1.0), "unknown key(s) budget"),
    (dict(format="ppt-schedule/9"), "format must be 'ppt-schedule/1'"),
    (dict(model="deit_huge"), "unknown model 'deit_huge'"),
    (dict(gmacs=0.9), "gmacs says 0.9 but this schedule costs 0.968059 GMACs"),
    (dict(target_gmacs=0.9), "the schedule costs 0.968059 GMACs, over its budget target_gmacs 0.9"),
    (dict(search=[1]), "search must be a JSON object"),
])
def test_each_problem_is_refused_in_one_line_naming_the_file(tmp_path, changes, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schedule(**changes)))
    with pytest.raises(UsageError) as e:
        load_schedule(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_missing_keys_unreadable_files_and_another_model(tmp_path):
    with pytest.raises(UsageError, match="missing key"):
        load_schedule({k: v for k, v in schedule().items() if k != "gmacs"})
    with pytest.raises(UsageError, match="schedule not found"):
        load_schedule(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="not a readable JSON schedule"):
        load_schedule(str(tmp_path / "bad.json"))
    with pytest.raises(UsageError, match="the schedule is for deit_tiny_patch16_224, not for --model deit_small"):
        load_schedule(schedule(), "deit_small_patch16_224")


def test_create_model_settings_take_a_schedule_or_r_pp_loc_list_threshold_not_both():
    cfg = config_from_settings(TINY, schedule(), prop_attn=False, method="pool")
    assert cfg.pp_loc_list == (2, 5, 8) and not cfg.prop_attn and cfg.method == "pool"
    for clash in (dict(r=3), dict(pp_loc_list=(3,)), dict(threshold=1e-4), dict(ppt_config=PPTConfig())):
        with pytest.raises(UsageError, match=f"give it without {next(iter(clash))}"):
            config_from_settings(TINY, schedule(), **clash)


def parse(*argv):
    p = argparse.ArgumentParser()
    add_model_args(p)
    add_ppt_args(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("argv", [("--schedule", "s.json", "--threshold", "1e-4"),
                                  ("--threshold", "7e-5", "--schedule", "s.json"),  # the default, spelled out
                                  ("--pp-loc-list", "3", "6", "9", "--schedule", "s.json"),
                                  ("--schedule", "s.json", "--r_tokens", "8"),
                                  ("--dense", "--schedule", "s.json"),
                                  ("--schedule", "s.json", "--target-gmacs", "0.8")])
def test_the_command_line_refuses_schedule_beside_the_settings_it_replaces(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2 and "--schedule sets r, the PP blocks and the thresholds: give it without" in \
        capsys.readouterr().err


def test_the_tools_options_take_the_schedule(tmp_path):
    path = str(tmp_path / "s.json")
    save_schedule(path, schedule())
    options = EvalOptions(**{k: v for k, v in vars(parse("--schedule", path, "--prop_attn", "false")).items()
                             if k in EvalOptions.__dataclass_fields__})
    cfg = ppt_config(options)
    assert cfg.r == (30, 20, 25) and cfg.threshold == (1.0, 0.0, 7e-5) and not cfg.prop_attn
    with pytest.raises(UsageError, match="give it without --threshold"):
        ppt_config(EvalOptions(schedule=path, threshold=1e-4))  # the library refuses it as well
    with pytest.raises(UsageError, match="not for --model deit_small_patch16_224"):
        ppt_config(EvalOptions(schedule=path, model="deit_small_patch16_224"))


def test_a_schedule_for_another_image_size_states_it_and_counts_tokens_and_macs_at_that_size(tmp_path):
    from ppt_common.config import model_arch
    big = [(2, 200, 0.0), (6, 100, 7e-5)]  # 200 is more than block 2 can remove at 224 px (98), not at 384 (288)
    s = make_schedule(TINY, big, img_size=384)
    assert s["img_size"] == 384
    assert s["gmacs"] == round(gmacs(model_arch(TINY, 384), schedule_config(s)), 6)
    assert "img_size" not in make_schedule(TINY, BLOCKS, img_size=224)  # the registered size is not recorded
    path = str(tmp_path / "s384.json")
    save_schedule(path, s)
    assert load_schedule(path, TINY, 384) == s == load_schedule(path)
    with pytest.raises(UsageError, match="at img_size 384, not at --img-size 224"):
        load_schedule(path, TINY, 224)
    with pytest.raises(UsageError, match="at img_size 384, not at --img-size 224"):
        config_from_settings(TINY, path)  # create_model without img_size builds the model at 224
    assert config_from_settings(TINY, path, img_size=384).r == (200, 100)
    assert ppt_config(EvalOptions(schedule=path, img_size=384)).pp_loc_list == (2, 6)
    with pytest.raises(UsageError, match="at img_size 384, not at --img-size 224"):
        ppt_config(EvalOptions(schedule=path))
    at_224 = {k: v for k, v in s.items() if k != "img_size"}
    with pytest.raises(UsageError, match="r=200 is more than it can remove"):
        load_schedule(at_224)
    with pytest.raises(UsageError, match="not a multiple of"):
        load_schedule(dict(s, img_size=390))


def test_the_search_moves_within_the_token_counts_of_the_size_it_searches_at():
    from ppt_common.config import model_arch
    from ppt_common.search import SearchSettings, exchanges, feasible, uniform
    small, big = get_arch(TINY), model_arch(TINY, 384)
    assert feasible(big, {2: (200, 0.0)}) and not feasible(small, {2: (200, 0.0)})
    settings = SearchSettings(target_gmacs=2.5)
    seed = uniform(big, (3, 6, 9), 7e-5, 2.5)
    assert gmacs(big, PPTConfig(r=tuple(seed[b][0] for b in (3, 6, 9)), pp_loc_list=(3, 6, 9))) <= 2.5
    assert seed[3][0] > small.num_tokens // 2  # more than a 224-px model could remove: counted at 384 px
    for trial, _ in exchanges(big, seed, 16, settings):
        assert feasible(big, trial)
        assert gmacs(big, PPTConfig(r=tuple(trial[b][0] for b in sorted(trial)), pp_loc_list=tuple(sorted(trial)),
                                    threshold=tuple(trial[b][1] for b in sorted(trial)))) <= 2.5
