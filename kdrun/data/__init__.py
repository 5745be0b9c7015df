"""Data sets as in-memory tensors, split into train / val / test, plus the students' transfer set.

Built-in loaders: ``synthetic`` (the notebook's), ``digits`` (shipped with kdrun), ``idx``
(MNIST and Fashion-MNIST files). A user's loader plugs in through a config's ``_target_``;
``splits`` says what it returns.
"""

from kdrun.data.splits import DataSplits, Split, load_data, stratified_split, stratified_subset, transfer_count

__all__ = ["DataSplits", "Split", "load_data", "stratified_split", "stratified_subset", "transfer_count"]
