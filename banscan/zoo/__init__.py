"""Model zoo: build clean and backdoored models from a spec, resumably, with a quality gate.

``banscan zoo build SPEC --out DIR`` trains every model a spec lists (architectures, widths, attacks with their
parameters, targets, poison rates, seeds, clean models) and writes one ``<id>.safetensors`` and one ``<id>.json``
card per model, ``<id>.attack.safetensors`` for attacks with trigger state, and ``DIR/manifest.json``.

The defender's clean data is a seeded, stratified hold-out of the training set (10% by default, as in the BAN
paper) that no zoo model ever trains on; :func:`defender_data` rebuilds it and checks its fingerprint.

Modules: :mod:`.spec` (specs and their expansion into models), :mod:`.store` (the zoo on disk: data, manifest,
cards, weights), :mod:`.build` (training, the gate, resuming, Ray).
"""

from __future__ import annotations

from .build import attack_success_rate, build_zoo, evaluate_zoo, train_entry, write_model
from .spec import load_spec, shipped_specs
from .store import (SCHEMA_VERSION, ZooCard, defender_data, load_manifest, load_zoo_model, model_from_card,
                    test_data)

__all__ = ["load_spec", "build_zoo", "evaluate_zoo", "load_manifest", "load_zoo_model", "defender_data",
           "test_data", "attack_success_rate", "shipped_specs", "ZooCard", "model_from_card", "train_entry",
           "write_model", "SCHEMA_VERSION"]
