"""``kdrun train --help``: the config groups with their options, every setting with its value
and one line of meaning (from the schemas), then examples. Hydra's own page is ``--hydra-help``."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from kdrun.config import compose, searchpath, user_config_dirs
from kdrun.run_files import natural_order

# Groups a user chooses from, in the order shown (trainer has one option; sweeps is plumbing).
GROUPS = ("dataset", "model", "model/teacher", "model/student", "loss", "logger", "experiment", "hparams_search")

EXAMPLES = """\
  kdrun train experiment=digits_transfer                      distillation on real digits, in seconds
  kdrun train -m experiment=digits_transfer trainer.seed=0,1,2,3,4
  kdrun train -m loss.alpha=0.5,0.9 loss.temperature=1,3,5    a grid; kdrun compare tabulates it
  kdrun train dataset=mnist dataset.root=$HOME/data model=hinton
  kdrun train --config-dir my_conf model/student=mynet        your own model (README: Extending kdrun)
  kdrun train logger=[tensorboard,mlflow] trainer.report=best_val   trackers; the best epoch on validation
  kdrun train hydra.run.dir=outputs/long                      the same command again continues it if stopped
  kdrun train --cfg job loss.temperature=5                    print the composed config, run nothing"""


def _options(group: str, folders: Sequence[Path]) -> list[str]:
    return sorted({path.stem for folder in folders for path in (folder / group).glob("*.yaml")}, key=natural_order)


def _meaning(node: Any, key: str) -> str:
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if dataclasses.is_dataclass(schema):
        for f in dataclasses.fields(schema):
            if f.name == key:
                return f.metadata.get("help", "")
    return ""


def _settings(node: DictConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, value, meaning) for every setting below ``node``."""
    rows = []
    for key in node.keys():
        if str(key).startswith("_") or (not prefix and key == "hydra") or f"{prefix}{key}" == "model.student.checkpoint":
            continue  # private, Hydra's, or a setting only the teacher takes
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            rows += _settings(child, f"{prefix}{key}.")
        else:
            value = OmegaConf.to_container(node, resolve=False)[key] if not child._is_missing() else "???"
            shown, meaning = _shown(value), _meaning(node, str(key))
            if OmegaConf.is_interpolation(node, str(key)):  # the value, and where it comes from: ${model.recipe_dkd_beta}
                try:
                    shown, meaning = _shown(OmegaConf.to_container(node, resolve=True)[key]), f"{meaning} (here {shown})".lstrip()
                except Exception:  # an interpolation that does not resolve here: shown as written
                    pass
            rows.append((f"{prefix}{key}", shown, meaning))
    return rows


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value).replace(" ", "")


def train_help(argv: Sequence[str], config_dir: Path) -> str:
    """The help page for ``kdrun train ARGV`` (its overrides choose what it shows)."""
    user_dirs = user_config_dirs(argv)
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    note = ""
    try:
        cfg = compose([*searchpath(user_dirs), *overrides], with_hydra=True)
    except Exception as error:  # show the defaults, and why not the command's choices
        note = f"\n(the defaults: {error})\n"
        cfg = compose(searchpath(user_dirs), with_hydra=True)
    choices = cfg.hydra.runtime.choices
    folders = [config_dir, *user_dirs]
    lines = [
        "usage: kdrun train [GROUP=OPTION ...] [KEY=VALUE ...] [-m] [--cfg job] [--config-dir DIR]",
        "",
        "Trains a teacher, a distilled student and a baseline student (the same initial weights and",
        "batches: the loss is the only difference), evaluates all three on held-out data and writes",
        "outputs/<date>/<time>/. -m sweeps every combination of comma-separated values; the students",
        "of jobs that differ only in the loss's settings or the seed train together",
        "(hydra.launcher.stack=false: one job after the other).",
        note,
        "Config groups (GROUP=OPTION; * the current choice):",
    ]
    for group in GROUPS:
        chosen = choices.get(group)
        options = " ".join(f"{o}*" if o == chosen else o for o in _options(group, folders))
        lines += textwrap.wrap(options, 100, initial_indent=f"  {group:<16} ", subsequent_indent=" " * 19, break_on_hyphens=False)
    lines += ["", "Settings (KEY=VALUE), with the current choices' values:"]
    rows = _settings(cfg)
    width = max(len(key) for key, _, _ in rows)
    value_width = min(24, max(len(value) for _, value, _ in rows))
    lines += [f"  {key:<{width}}  {value:<{value_width}}  {meaning}".rstrip() for key, value, meaning in rows]
    lines += ["", "Examples:", EXAMPLES, "", "Hydra's own options: kdrun train --hydra-help"]
    return "\n".join(lines) + "\n"
