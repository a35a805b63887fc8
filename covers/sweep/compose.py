"""Per-trial config composition without re-reading the config tree: a Hydra ``ConfigLoader`` for sweep jobs.

Hydra composes every sweep job from scratch (``load_sweep_config``: parse every YAML file of the defaults tree,
build the tree, merge), ~0.1 s per trial on 2 cores. Trials of one sweep differ almost always only in plain
values (``optim.lr=0.003``), which Hydra applies *after* composition, to the composed config, in order. So the
config composed for the structural overrides (config-group choices, ``hydra.*`` and anything not a plain
``key=value``) is cached per process, and each job gets a deep copy with its plain overrides applied by Hydra's own
routine, and the ``hydra.overrides.task`` / ``hydra.job.override_dirname`` a full composition would record.
Any app override that is not a plain ``key=value`` (``+key``, ``~key``, ``key@pkg``), any dict value and a
``hydra.searchpath`` (groups Hydra finds only there) fall back to Hydra's full composition. Edits to the YAML
files during a sweep reach the trials of a new sweep process only. ``tests/test_sweep_compose.py`` checks the
result equals Hydra's own."""

from __future__ import annotations

import copy
import os
import sys
import threading
from collections import OrderedDict
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

_MAX_ENTRIES = 16
# composed configs of this process by (search path, config name, cwd, structural overrides); a module global so
# that it outlives the loader, which process launchers (joblib) unpickle afresh for every job
_composed: OrderedDict[tuple, DictConfig] = OrderedDict()
_lock = threading.Lock()


def _plain(override: Override) -> bool:
    """``key=value`` on an app key: applied to the composed config without touching the defaults tree (dict values
    never get here: they fall back to Hydra's full composition)."""
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_hydra_override()
        and not override.is_sweep_override()
    )


class SweepConfigLoader(ConfigLoader):
    """Delegates to Hydra's loader; ``load_sweep_config`` reuses the composition shared by a sweep's jobs."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        lines = list(OmegaConf.to_container(master_config.hydra.overrides.hydra)) + list(sweep_overrides)
        parsed = OverridesParser.create().parse_overrides(overrides=lines)
        repo = getattr(self.loader, "repository", None)
        if repo is None or master_config.hydra.get("searchpath") or any(isinstance(o.value(), dict) for o in parsed):
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        kinds = [(o, repo.group_exists(o.key_or_group)) for o in parsed]  # Hydra's test for a group override
        if any(not group and not o.is_hydra_override() and not _plain(o) for o, group in kinds):
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        plain = [o for o, group in kinds if not group and _plain(o)]
        structural = [o.input_line for o, group in kinds if group or not _plain(o)]
        config_name = master_config.hydra.job.config_name
        search_path = tuple((e.provider, e.path) for e in self.loader.get_search_path().get_path())
        key = (search_path, config_name, os.getcwd(), tuple(structural))
        with _lock:
            if key not in _composed:
                _composed[key] = self.loader.load_configuration(config_name, structural, RunMode.RUN)
                while len(_composed) > _MAX_ENTRIES:
                    _composed.popitem(last=False)
            _composed.move_to_end(key)
            cfg = copy.deepcopy(_composed[key])
        try:
            ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        except OmegaConfBaseException as e:  # as Hydra's load_configuration reports it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
        app = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in app]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys
        )
        with open_dict(cfg.hydra.job):  # read from the environment at composition, as Hydra does per job
            for name in cfg.hydra.job.env_copy:
                cfg.hydra.job.env_set[name] = os.environ[name]
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    # -- everything else as Hydra's loader does it ---------------------------------------------------------------
    def load_configuration(self, config_name: str | None, overrides: list[str], run_mode: RunMode, **kw) -> Any:
        return self.loader.load_configuration(config_name, overrides, run_mode, **kw)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> Any:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)
