from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crossmodal.config import MethodConfig, with_overrides
from crossmodal.errors import ConfigError, DatasetFormatError, UnknownNameError
from crossmodal.featureset import FeatureSet
from crossmodal.registry import Registry
from crossmodal.types import canonical_modality


@dataclasses.dataclass(frozen=True)
class TinyConfig(MethodConfig):
    lr: float = 1e-3
    hidden: tuple[int, ...] = (8, 8)
    prior: str = "spl"
    prior_from: str | None = None


def test_overrides_are_parsed_and_typed_by_field():
    cfg = with_overrides(TinyConfig(), ["lr=5e-4", "hidden=[4, 2]", "epochs=3", "prior=random", "prior_from=null"])
    assert (cfg.lr, cfg.hidden, cfg.epochs, cfg.prior, cfg.prior_from) == (5e-4, (4, 2), 3, "random", None)


def test_an_unknown_override_key_is_an_error_listing_valid_fields():
    with pytest.raises(ConfigError, match="no field"):
        with_overrides(TinyConfig(), ["lrr=1"])


def test_an_override_of_the_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="expects"):
        with_overrides(TinyConfig(), ["epochs=abc"])


def test_config_round_trips_through_a_dict():
    cfg = TinyConfig(lr=0.5, hidden=(3,))
    assert TinyConfig.from_dict(cfg.to_dict()) == cfg


def test_featureset_one_hot_label_matrix_leaves_unlabelled_rows_empty():
    fs = FeatureSet.build(np.zeros((3, 2)), np.array([1, -1, 0]), num_classes=2)
    np.testing.assert_array_equal(fs.label_matrix(), [[0, 1], [0, 0], [1, 0]])
    assert fs.X.dtype == np.float32 and list(fs.ids) == ["0", "1", "2"]


def test_featureset_with_mismatched_counts_names_the_source():
    with pytest.raises(DatasetFormatError, match="wiki.mat"):
        FeatureSet.build(np.zeros((3, 2)), np.array([0, 1]), source="wiki.mat")


def test_registry_refuses_duplicates_and_suggests_close_names():
    reg: Registry[type] = Registry("thing")

    class Drcl:
        name = "drcl"

    reg.register(Drcl)
    with pytest.raises(ValueError):
        reg.register(Drcl)
    with pytest.raises(UnknownNameError, match="drcl"):
        reg.get("drc")


def test_3d_is_an_alias_of_the_mesh_modality():
    assert canonical_modality("3d") == "mesh"
    with pytest.raises(ConfigError):
        canonical_modality("smell")


def test_keep_freed_memory_takes_effect_on_glibc_and_is_a_no_op_elsewhere():
    import platform

    from crossmodal.device import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
