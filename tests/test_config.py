"""Config loading: every shipped config validates; typos and bad values are one-line errors naming the key."""

from pathlib import Path

import pytest

from east.config import RunConfig, expand_arms, load_config, ArmConfig
from east.errors import UserError

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if "accelerate" not in p.relative_to(ROOT).parts)
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_loads_and_names_its_launch_command(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert path.read_text().startswith("# Launch: "), "configs start with their launch command"
    assert expand_arms(config.arms)


def test_configs_were_found():
    assert any(p.name == "demo.yaml" for p in CONFIGS)
    assert {p.stem for p in ACCELERATE_CONFIGS} == {"ddp", "zero2", "zero3", "fsdp2"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_accelerate_config_loads_and_names_its_launch_command(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # accelerate's own loader: refuses unknown keys
    assert config.distributed_type.value == {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED",
                                             "fsdp2": "FSDP"}[path.stem]
    assert path.read_text().startswith(f"# Launch: accelerate launch --config_file configs/accelerate/{path.name} "
                                       "-m east.training.worker RUN_DIR ARM\n")


def test_unknown_key_names_the_dotted_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampling:\n  nn: 3\n")
    with pytest.raises(UserError, match=r"unknown key 'sampling.nn'"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampling:\n  n: lots\n")
    with pytest.raises(UserError, match=r"key 'sampling.n'"):
        load_config(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task:\n  name: arith\n  : [\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+"):
        load_config(path)


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    config = load_config(None, ["sampling.n=32", "train.sft.learning_rate=1e-5", "seeds=[1, 2]", "prompt.system=null"])
    assert config.sampling.n == 32
    assert config.train.sft.learning_rate == 1e-5
    assert config.seeds == [1, 2]
    assert config.prompt.system is None


def test_override_without_equals_is_an_error():
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_config(None, ["sampling.n"])


def test_a_list_expands_into_one_arm_per_value():
    arms = expand_arms([ArmConfig(name="east", weighting="entropy", a=[-1, 0.5, 1.5]), ArmConfig(weighting="none")])
    assert [arm.label() for arm in arms] == ["east@-1", "east@0.5", "east@1.5", "sft"]
    assert [arm.a for arm in arms[:3]] == [-1.0, 0.5, 1.5]


def test_unnamed_arms_get_descriptive_labels():
    assert ArmConfig(loss="dpo", weighting="lw_p").label() == "dpo+lw_p"
    assert ArmConfig(loss="kto", weighting="entropy", a=2).label() == "kto+entropy@2"


def test_duplicate_arm_names_are_refused():
    with pytest.raises(UserError, match="distinct"):
        load_config(None, ["arms=[{name: x}, {name: x, weighting: entropy}]"])


def test_linear_mapping_needs_a_range():
    with pytest.raises(UserError, match="linear_range"):
        load_config(None, ["arms=[{weighting: entropy, mapping: linear}]"])


def test_section_digest_changes_with_values():
    a, b = load_config(None), load_config(None, ["sampling.n=3"])
    assert a.sampling.digest() != b.sampling.digest()
    assert a.train.digest() == b.train.digest()
